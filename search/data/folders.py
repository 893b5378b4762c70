"""Your own images: a folder of labelled images, decoded once and cached.

The layout is `keras.utils.image_dataset_from_directory`'s: one sub-folder per class, the
class names the sub-folders' names, sorted; PNG, JPEG, BMP or GIF files inside (by their
content, not their names). Files whose names start with "." (.DS_Store, editors' backups)
are not read.

    data:
      source: {folder: photos}     # photos/cat/*.png, photos/dog/*.jpg, ...
      image_size: [64, 64]         # height, width; default: the most common size
      test: photos_test            # optional; default a stratified test_fraction of photos/
      on_bad_image: error          # or skip

Every image becomes RGB (grayscale, palette and RGBA images are converted, the alpha
channel dropped; a warning counts them) and is resized to `image_size` with Pillow's
Lanczos filter, the same call `blocksweep predict` makes on a new image, so the kept model
sees a user's image as it saw its training images.

Decoding happens once: the folder is decoded in parallel (one thread per core; Pillow
releases the GIL while it decodes) into `mlruns/images/<key>.npz`, where the key hashes
every file's relative path, size and modification time plus the settings that change the
pixels (image size, on_bad_image). A second trial, a rerun or a second worker on the same
machine reads the cache instead (decoded uint8, uncompressed). The test split, when drawn
from the folder, is drawn once (stratified, seed 0: it belongs to the data, not to a
trial's `data.seed`) and recorded beside the cache as `<key>.test-<fraction>.json`.

Folders whose decoded images exceed the in-memory limit (`IN_MEMORY_LIMIT`, 1 GiB of
uint8 pixels; the environment variable BLOCKSWEEP_IN_MEMORY_LIMIT sets another, in bytes)
stream instead (`StreamedFolder`): nothing but the file lists is held. One parallel pass
decodes every file once to check it and to sum its pixels per channel (the sums are what
the normalisation constants of any training split are made of: a running mean and std),
recorded as `<key>.stream.npz`; training then decodes each batch in parallel as it needs
it (search/training/streaming.py). The line: measured on the 2-core CPU (2026-12-01,
bench/folder_demo.py --memory 5000), 5,000 PNGs at 64x64 (59 MiB decoded) peak at 431 MiB
once split and standardised to float32, 7.3x the decoded bytes; so 1 GiB decoded is a
peak of about 8 GiB, what a modest machine holds. Below it, memory is the faster path:
that folder decodes in 3.7-7.4 s once and reads back from the cache in 0.3-1.3 s (load
average ~5), where streaming decodes every image again each epoch.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from search.config.records import MAX_IMAGE_SIDE
from search.errors import UsageError, first_line

FORMATS = ("PNG", "JPEG", "BMP", "GIF")  # Pillow's names for the formats a folder may hold
# Decoded uint8 bytes held in memory at most (train and test together): 1 GiB, a trial's
# peak of about 8 GiB (measured above). About 350,000 images at 32x32, 87,000 at 64x64.
# A larger folder streams. BLOCKSWEEP_IN_MEMORY_LIMIT (bytes) moves the line (tests stream
# a tiny folder with it).
IN_MEMORY_LIMIT = 1 << 30
LIMIT_VARIABLE = "BLOCKSWEEP_IN_MEMORY_LIMIT"
# The pixels of a decoded cache entry depend on these; bump when the decoding changes.
DECODER_VERSION = 1
# Pillow's modes other than RGB, in words, for the conversion warning.
MODES = {"1": "black-and-white", "L": "grayscale", "I": "grayscale", "I;16": "grayscale", "F": "grayscale",
         "LA": "grayscale with alpha", "La": "grayscale with alpha", "RGBA": "RGBA", "RGBa": "RGBA",
         "P": "palette", "PA": "palette with alpha", "CMYK": "CMYK", "YCbCr": "YCbCr"}


@dataclass(frozen=True)
class ImageFolder:
    """A folder's images as arrays, the shape `prepare` (splits.py) takes: NHWC uint8
    images and int labels for train and test, with the class names and where they came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    label_names: tuple[str, ...]
    source: str
    name: str  # the folder's name: the MLflow dataset's name
    digest: str = ""  # the cache key: the folder's content (names, sizes, mtimes) and settings
    decode_seconds: float = 0.0  # 0 when read from the cache
    cached: bool = False


@dataclass(frozen=True, eq=False)
class StreamedFolder:
    """A folder too large for memory: its files (absolute paths) and labels for train and
    test, and each training file's per-channel pixel sums (int64, exact), from which
    `prepare` makes any training split's mean and std without decoding again."""

    train_files: tuple[str, ...]
    y_train: np.ndarray
    sums: np.ndarray  # (n, 3): each training file's pixel values summed per channel
    squares: np.ndarray  # (n, 3): the same of their squares
    test_files: tuple[str, ...]
    y_test: np.ndarray
    image_size: tuple[int, int]
    label_names: tuple[str, ...]
    source: str
    name: str
    digest: str = ""
    decode_seconds: float = 0.0  # the checking pass; 0 when read from its record
    cached: bool = False
    streamed: bool = True

    def part(self, files: tuple[str, ...], mean, std) -> "StreamedImages":
        """Some of its files as a part of a split (`prepare`), standardised with mean and std."""
        return StreamedImages(files=files, size=tuple(self.image_size), mean=np.asarray(mean, np.float32),
                              std=np.asarray(std, np.float32))


@dataclass(frozen=True, eq=False)
class StreamedImages:
    """One part of a streamed split: image files that are decoded (in parallel) and
    standardised only when indexed, `images[i:j]` or `images[indices]`, with the same
    arithmetic as an in-memory split's. Stands where an array stands in `Splits` (len,
    shape, slicing); search/training/streaming.py feeds it to Keras batch by batch."""

    files: tuple[str, ...]
    size: tuple[int, int]  # (height, width)
    mean: np.ndarray  # (3,) float32, pixel units
    std: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), *self.size, 3)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index) -> np.ndarray:
        chosen = self.files[index] if isinstance(index, slice) else [self.files[i] for i in np.asarray(index)]

        def one(path):
            try:
                return decode(Path(path), self.size)[0]
            except BadImage as err:  # changed since the checking pass
                raise UsageError(f"{path}: {err}") from None

        out = np.empty((len(chosen), *self.size, 3), dtype=np.float32)
        with ThreadPoolExecutor(min(_workers(), max(1, len(chosen)))) as pool:
            for i, pixels in enumerate(pool.map(one, chosen)):
                out[i] = pixels
        out -= self.mean
        out /= self.std
        return out

    def digest(self) -> str:
        """SHA-256 of the file list, size and constants: the part's identity, as the
        digest of an in-memory part's arrays is."""
        import hashlib

        h = hashlib.sha256("\n".join(self.files).encode())
        h.update(repr((self.size, self.mean.tolist(), self.std.tolist())).encode())
        return h.hexdigest()


def in_memory_limit() -> int:
    """The decoded bytes a folder may have to be held in memory: $BLOCKSWEEP_IN_MEMORY_LIMIT
    or IN_MEMORY_LIMIT."""
    text = os.environ.get(LIMIT_VARIABLE, "").strip()
    if not text:
        return IN_MEMORY_LIMIT
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{LIMIT_VARIABLE}={text}: not a number of bytes") from None


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class Listing:
    """A folder's image files (relative paths, sorted) and their class indices."""

    root: Path
    files: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]

    def key_fields(self) -> list:
        """Each file's relative path, size and modification time: what the cache key hashes."""
        out = []
        for rel in self.files:
            st = (self.root / rel).stat()
            out.append([rel, st.st_size, st.st_mtime_ns])
        return out


def list_folder(root: Path, what: str, classes: Optional[tuple[str, ...]] = None) -> Listing:
    """The class sub-folders and their files; UsageError names what is wrong. `classes`:
    the class folders a test folder must have (the training folder's)."""
    if not root.exists():
        raise UsageError(f"{what} {root}: no such folder")
    if not root.is_dir():
        raise UsageError(f"{what} {root}: not a folder (expected one sub-folder per class)")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise UsageError(f"{what} {root}: no class folders (expected one sub-folder of images per class)")
    if classes is None and len(found) < 2:
        raise UsageError(f"{what} {root}: one class only ({found[0]}/); a classifier needs at least two class folders")
    if classes is not None and tuple(found) != classes:
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        raise UsageError(f"{what} {root}: its class folders differ from the training folder's "
                         f"(missing: {', '.join(missing) or '-'}; not in training: {', '.join(extra) or '-'})")
    files, labels = [], []
    for index, name in enumerate(found):
        inside = sorted(p for p in (root / name).rglob("*") if p.is_file() and not p.name.startswith("."))
        if not inside:
            raise UsageError(f"{what} {root / name}: a class folder with no images")
        files += [str(p.relative_to(root)) for p in inside]
        labels += [index] * len(inside)
    return Listing(root=root, files=tuple(files), labels=tuple(labels), classes=tuple(found))


# --------------------------------------------------------------------------- decoding


class BadImage(Exception):
    """A file that is not a readable image of an accepted format."""


def _open(path: Path):
    """The opened image (lazy: the header only), checked for format and size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImage(f"refused, too large to decode safely ({first_line(err, 120)})") from None
    except UnidentifiedImageError:
        raise BadImage("not an image (PNG, JPEG, BMP or GIF)") from None
    except OSError as err:
        raise BadImage(f"cannot read ({err.__class__.__name__}: {first_line(err, 120)})") from None
    if img.format not in FORMATS:
        img.close()
        raise BadImage(f"a {img.format} image; a folder may hold PNG, JPEG, BMP and GIF images")
    return img


def image_size_of(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header."""
    with _open(path) as img:
        return img.size[1], img.size[0]


def decode(path: Path, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """One file as (height, width, 3) uint8 RGB at `size`, and its original mode. The resize
    is Pillow's Lanczos on the RGB image: `blocksweep predict` (artifacts/predict.py) makes
    the same call, so a new image is seen as the training images were."""
    from PIL import Image

    try:
        with _open(path) as img:
            mode = img.mode
            if mode == "P" and "transparency" in img.info:
                mode = "PA"
            # A GIF's first frame; RGBA's alpha channel is dropped (not composited).
            rgb = img.convert("RGB")
    except BadImage:
        raise
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        raise BadImage(f"corrupt or truncated image ({err.__class__.__name__}: {first_line(err, 120)})") from None
    if rgb.size != (size[1], size[0]):
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8), mode


def _workers() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def _most_common_size(listing: Listing, bad: dict[str, str], what: str) -> tuple[int, int]:
    def header(rel):
        try:
            return rel, image_size_of(listing.root / rel), None
        except BadImage as err:
            return rel, None, str(err)

    with ThreadPoolExecutor(_workers()) as pool:
        sizes = Counter()
        for rel, size, err in pool.map(header, listing.files):
            if err is not None:
                bad[rel] = err
            else:
                sizes[size] += 1
    if not sizes:
        raise UsageError(f"{what} {listing.root}: no readable images")
    # Ties go to the larger image (more pixels kept), then the taller one.
    return max(sizes.items(), key=lambda kv: (kv[1], kv[0][0] * kv[0][1], kv[0]))[0]


def _decode_all(listing: Listing, size: tuple[int, int], bad: dict[str, str]):
    """Every file decoded (in parallel) at `size`: images, labels, files kept, modes met."""
    def one(rel):
        try:
            return decode(listing.root / rel, size)
        except BadImage as err:
            return str(err)

    images, labels, kept, modes = [], [], [], Counter()
    with ThreadPoolExecutor(_workers()) as pool:
        for rel, label, out in zip(listing.files, listing.labels, pool.map(one, listing.files)):
            if isinstance(out, str):
                bad.setdefault(rel, out)
                continue
            pixels, mode = out
            images.append(pixels)
            labels.append(label)
            kept.append(rel)
            if mode != "RGB":
                modes[mode] += 1
    x = np.stack(images) if images else np.zeros((0, *size, 3), np.uint8)
    return x, np.asarray(labels, dtype=np.int64), kept, modes


def _check_bad(bad: dict[str, str], root: Path, what: str, on_bad_image: str) -> None:
    if not bad:
        return
    first = sorted(bad)[0]
    if on_bad_image == "error":
        more = f" (and {len(bad) - 1} more bad files)" if len(bad) > 1 else ""
        raise UsageError(f"{what} {root / first}: {bad[first]}{more}; set data.on_bad_image: skip to leave "
                         "bad files out")
    names = ", ".join(sorted(bad)[:5]) + (f", ... ({len(bad) - 5} more)" if len(bad) > 5 else "")
    print(f"blocksweep: warning: {root}: skipped {len(bad)} bad file{'s' * (len(bad) > 1)} "
          f"(data.on_bad_image: skip): {names}", file=sys.stderr)


def _warn_modes(modes: Counter, root: Path) -> None:
    if modes:
        parts = ", ".join(f"{n} {MODES.get(m, m)}" for m, n in sorted(modes.items()))
        alpha = " (alpha dropped)" if any("A" in m or m == "PA" for m in modes) else ""
        print(f"blocksweep: note: {root}: converted {sum(modes.values())} images to RGB: {parts}{alpha}",
              file=sys.stderr)


# --------------------------------------------------------------------------- the cache


def _cache_root() -> Path:
    from search.tracking.store import cache_dir

    return cache_dir("images")


def _load_part(listing: Listing, size: Optional[tuple[int, int]], on_bad_image: str, what: str):
    """(x, y, files, key, seconds decoding, cached) of one folder, through the cache."""
    import time

    from search.tracking.store import key_of, locked, replace_atomically

    key = key_of({"files": listing.key_fields(), "classes": listing.classes, "size": size,
                  "on_bad_image": on_bad_image, "decoder": DECODER_VERSION})
    path = _cache_root() / f"{key}.npz"
    limit = in_memory_limit()
    stream = _cache_root() / f"{key}.stream.npz"  # a streamed folder's record (_scan_part)
    with locked(path):  # parallel workers wait for the first one's decoding
        # (An uncompressed cache file is its pixels' bytes and a little more: over the
        # limit, it was decoded under a higher one, and the folder streams now.)
        if path.exists() and path.stat().st_size <= limit:
            with np.load(path, allow_pickle=False) as z:
                skipped = [str(s) for s in z["skipped"]]
                if skipped:  # the warning, every time the data is used
                    _check_bad({s: "skipped before" for s in skipped}, listing.root, what, on_bad_image)
                return z["x"], z["y"], [str(f) for f in z["files"]], key, 0.0, True
        if stream.exists():
            with np.load(stream, allow_pickle=False) as z:
                size = tuple(int(v) for v in z["size"])
                if len(listing.files) * size[0] * size[1] * 3 > limit:  # else: it fits now, decode it
                    _check_bad({str(s): "skipped before" for s in z["skipped"]}, listing.root, what, on_bad_image)
                    return (size, z["sums"], z["squares"]), z["y"], [str(f) for f in z["files"]], key, 0.0, True
        start = time.perf_counter()
        bad: dict[str, str] = {}
        if size is None:
            size = _most_common_size(listing, bad, what)
            if on_bad_image == "error":  # skipped files are named once, after decoding
                _check_bad(bad, listing.root, what, on_bad_image)
            if max(size) > MAX_IMAGE_SIDE:
                raise UsageError(f"{what} {listing.root}: its images are mostly {size[0]}x{size[1]}, over the "
                                 f"{MAX_IMAGE_SIDE}-pixel side data.image_size allows; set data.image_size "
                                 "(e.g. [224, 224]) to resize them on loading")
        if len(listing.files) * size[0] * size[1] * 3 > limit:
            return _scan_part(listing, size, on_bad_image, what, key, bad)
        x, y, kept, modes = _decode_all(listing, size, bad)
        _check_bad(bad, listing.root, what, on_bad_image)
        _warn_modes(modes, listing.root)
        missing = sorted(set(listing.classes) - {listing.classes[i] for i in set(y.tolist())})
        if missing:
            raise UsageError(f"{what} {listing.root / missing[0]}: no readable images left in this class folder")
        seconds = time.perf_counter() - start
        tmp = path.with_name(f"{key}.tmp.npz")
        np.savez(tmp, x=x, y=y, files=np.asarray(kept, dtype=str), skipped=np.asarray(sorted(bad), dtype=str))
        replace_atomically(tmp, path)
        print(f"blocksweep: note: {listing.root}: decoded {len(x)} images at {size[0]}x{size[1]} in {seconds:.2f} s "
              f"on {_workers()} threads; cached in {path} for later runs", file=sys.stderr)
        return x, y, kept, key, seconds, False


def _scan_part(listing: Listing, size: tuple[int, int], on_bad_image: str, what: str, key: str,
               bad: dict[str, str]):
    """A folder too large for memory, checked in one parallel pass that decodes each file,
    sums its pixels per channel and lets it go; recorded as `<key>.stream.npz` (file list,
    labels, sums). Returns what `_load_part` does, with (size, sums, squares) for the images."""
    import time

    from search.tracking.store import replace_atomically

    start = time.perf_counter()

    def one(rel):
        try:
            pixels, mode = decode(listing.root / rel, size)
        except BadImage as err:
            return str(err)
        flat = pixels.reshape(-1, 3).astype(np.int64)
        return flat.sum(axis=0), (flat * flat).sum(axis=0), mode

    sums, squares, labels, kept, modes = [], [], [], [], Counter()
    with ThreadPoolExecutor(_workers()) as pool:  # results are six numbers a file: nothing piles up
        for rel, label, out in zip(listing.files, listing.labels, pool.map(one, listing.files)):
            if isinstance(out, str):
                bad.setdefault(rel, out)
                continue
            sums.append(out[0])
            squares.append(out[1])
            labels.append(label)
            kept.append(rel)
            if out[2] != "RGB":
                modes[out[2]] += 1
    _check_bad(bad, listing.root, what, on_bad_image)
    _warn_modes(modes, listing.root)
    y = np.asarray(labels, dtype=np.int64)
    missing = sorted(set(listing.classes) - {listing.classes[i] for i in set(y.tolist())})
    if missing:
        raise UsageError(f"{what} {listing.root / missing[0]}: no readable images left in this class folder")
    sums = np.asarray(sums, dtype=np.int64).reshape(-1, 3)
    squares = np.asarray(squares, dtype=np.int64).reshape(-1, 3)
    seconds = time.perf_counter() - start
    path = _cache_root() / f"{key}.stream.npz"
    tmp = path.with_name(f"{key}.stream.tmp.npz")
    np.savez(tmp, size=np.asarray(size), sums=sums, squares=squares, y=y, files=np.asarray(kept, dtype=str),
             skipped=np.asarray(sorted(bad), dtype=str))
    replace_atomically(tmp, path)
    print(f"blocksweep: note: {listing.root}: {len(listing.files)} images at {size[0]}x{size[1]} are "
          f"{_amount(len(listing.files) * size[0] * size[1] * 3)} decoded, over the {_amount(in_memory_limit())} "
          f"held in memory: they stream from their files (checked in {seconds:.2f} s on {_workers()} threads)",
          file=sys.stderr)
    return (size, sums, squares), y, kept, key, seconds, False


def _amount(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def _test_split(key: str, files: list[str], y: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the test images drawn from the folder: stratified, seed 0, picked once and
    recorded as a list of files beside the cache, which later runs read back."""
    from search.data.splits import stratified_pick
    from search.tracking.store import locked

    record = _cache_root() / f"{key}.test-{fraction:g}.json"
    with locked(record):
        if record.exists():
            chosen = set(json.loads(record.read_text())["test"])
            return np.asarray([i for i, f in enumerate(files) if f in chosen], dtype=np.int64)
        size = max(1, round(len(files) * fraction))
        if size >= len(files):
            raise UsageError(f"data.test_fraction {fraction:g}: leaves no training images of {len(files)}")
        picked = np.sort(stratified_pick(y, size, np.random.default_rng(0)))
        tmp = record.with_name(record.name + ".tmp")
        tmp.write_text(json.dumps({"test_fraction": fraction, "seed": 0,
                                   "test": [files[i] for i in picked]}, indent=1))
        os.replace(tmp, record)
        return picked


def load_folder(config) -> ImageFolder:
    """The images of a `data.source: {folder: PATH}` config (a `DataConfig`), through the
    decoded cache; UsageError names a bad folder or file, and leaves nothing behind."""
    existed = (_store_root() / "images").exists()
    try:
        return _load_folder(config)
    except UsageError:
        if not existed:  # bad input creates nothing: not even the cache's folder and locks
            shutil.rmtree(_store_root() / "images", ignore_errors=True)
        raise


def _store_root() -> Path:
    from search.tracking.store import STORE

    return STORE


def _load_folder(config):
    root = Path(config.source.folder)
    listing = list_folder(root, "data.source.folder")
    x, y, files, key, seconds, cached = _load_part(listing, config.image_size, config.on_bad_image,
                                                   "data.source.folder")
    streamed = isinstance(x, tuple)  # (size, sums, squares): over the in-memory limit
    size = x[0] if streamed else tuple(x.shape[1:3])
    test_files = None
    if config.test is not None:
        test = list_folder(Path(config.test), "data.test", classes=listing.classes)
        tx, ty, test_files, test_key, test_seconds, test_cached = _load_part(test, size, config.on_bad_image,
                                                                             "data.test")
        if isinstance(tx, tuple) != streamed:  # one part streams, the other fits: both stream
            tx = (size, None, None) if streamed else tx
            streamed = True
            if not isinstance(x, tuple):
                flat = x.reshape(len(x), -1, 3).astype(np.int64)
                x = (size, flat.sum(axis=1), (flat * flat).sum(axis=1))
        test_root = test.root
        seconds += test_seconds
        cached = cached and test_cached
        key = f"{key}+{test_key}"
    else:
        pick = _test_split(key, files, y, config.test_fraction)
        rest = np.setdiff1d(np.arange(len(files)), pick)
        if streamed:
            test_root, test_files = root, [files[i] for i in pick]
            files, x = [files[i] for i in rest], (size, x[1][rest], x[2][rest])
            y, ty = y[rest], y[pick]
        else:
            x, y, tx, ty = x[rest], y[rest], x[pick], y[pick]
    if streamed:
        return StreamedFolder(train_files=tuple(str((root / f).resolve()) for f in files), y_train=y,
                              sums=x[1], squares=x[2],
                              test_files=tuple(str((test_root / f).resolve()) for f in test_files), y_test=ty,
                              image_size=size, label_names=listing.classes, source=str(root.resolve()),
                              name=root.resolve().name, digest=key, decode_seconds=seconds, cached=cached)
    return ImageFolder(x_train=x, y_train=y, x_test=tx, y_test=ty, label_names=listing.classes,
                       source=str(root.resolve()), name=root.resolve().name, digest=key,
                       decode_seconds=seconds, cached=cached)


# --------------------------------------------------------------------------- writing


def write_image_folder(root: str | os.PathLike, images: np.ndarray, labels: np.ndarray,
                       label_names: tuple[str, ...], size: Optional[tuple[int, int]] = None,
                       fmt: str = "png") -> Path:
    """Write (n, h, w, 3) uint8 images as `root/<class name>/<index>.<fmt>`, resized to
    `size` (height, width) with Lanczos when given. Used by tests and bench/ to make
    real-shaped folders (spaces/folder_demo.yaml's)."""
    from PIL import Image

    root = Path(root)
    for name in set(label_names[int(c)] for c in labels):
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (pixels, label) in enumerate(zip(images, labels)):
        img = Image.fromarray(np.asarray(pixels, dtype=np.uint8), "RGB")
        if size is not None and img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.Resampling.LANCZOS)
        img.save(root / label_names[int(label)] / f"{i:05d}.{fmt}")
    return root
