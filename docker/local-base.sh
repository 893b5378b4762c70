#!/usr/bin/env bash
# A base image equivalent to the public python:3.11-slim (Debian bookworm, Python 3.11, pip
# on PATH), built from Debian's packages alone, for machines that cannot pull from an image
# registry. Then build on it:
#
#   sudo docker/local-base.sh                      # tags blocksweep-base:bookworm
#   docker build --network host --build-arg BASE_IMAGE=blocksweep-base:bookworm \
#       -f docker/Dockerfile -t blocksweep:cpu .
#
# or BASE_IMAGE=blocksweep-base:bookworm in docker/.env with compose.local.yaml (README.md).
# Needs root (debootstrap), debootstrap and a running Docker engine; ~40 s here when the
# Debian mirror answers quickly. Debian's python3 is 3.11 with a PEP 668 marker (pip refuses
# to install into it), so pip runs in a virtual environment at /opt/python, first on PATH.
# The CA bundle is this machine's: where the package registries are reached through a
# TLS-intercepting proxy, only the machine's own bundle lets pip in a container verify them.
#
# Usage: local-base.sh [TAG]   (environment: DEBIAN_MIRROR, CA_BUNDLE)
set -euo pipefail

tag=${1:-blocksweep-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

for tool in debootstrap docker; do
  command -v "$tool" >/dev/null || { echo "local-base.sh: $tool is not installed (apt-get install debootstrap docker.io)" >&2; exit 2; }
done
[ -r "$ca_bundle" ] || { echo "local-base.sh: no CA bundle at $ca_bundle (set CA_BUNDLE)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "local-base.sh: debootstrap needs root" >&2; exit 2; }

root=$(mktemp -d /tmp/blocksweep-base.XXXXXX)
trap 'rm -rf "$root"' EXIT

# minbase: the Essential packages and apt, nothing else (no init, no docs beyond those).
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror"
cat > "$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
EOF
cp "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
chroot "$root" python3 -m venv /opt/python
# What python:3.11-slim leaves out too: package caches and lists, documentation, locales.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
       "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*

# The label names this script's version: tests/test_docker_live.py rebuilds a base whose
# script has changed since.
tar -C "$root" -c . | docker import \
  --change "LABEL org.blocksweep.local-base=$(sha256sum < "$0" | cut -c1-16)" \
  --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["python3"]' \
  - "$tag" >/dev/null
echo "local-base.sh: $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
