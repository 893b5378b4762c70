#!/bin/sh
# The official postgres image's start-up, for what compose.yaml relies on: on an empty data
# folder, initdb with POSTGRES_USER as the superuser and POSTGRES_PASSWORD as its password
# (password authentication over TCP, scram-sha-256; trust on the local socket inside the
# container), create POSTGRES_DB and run /docker-entrypoint-initdb.d/*.sql once, on a
# server that listens on its socket only; then exec the command (postgres). PostgreSQL
# keeps its default listen_addresses, localhost: this image runs on the host's network
# (compose.local.yaml), where '*' would open it on every interface of the machine.
set -eu
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
         --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait --silent start
  if [ "$db" != postgres ]; then
    psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 --username="$user" --dbname=postgres \
         --command="CREATE DATABASE \"$db\""
  fi
  for script in /docker-entrypoint-initdb.d/*.sql; do
    [ -e "$script" ] || continue
    echo "postgres-entrypoint.sh: running $script"
    psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 --username="$user" --dbname="$db" --file="$script"
  done
  pg_ctl --pgdata="$PGDATA" --mode=fast --wait --silent stop
  echo "postgres-entrypoint.sh: initialised $PGDATA (user $user, database $db)"
fi
exec "$@"
