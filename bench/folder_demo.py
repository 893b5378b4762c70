"""spaces/folder_demo.yaml's folder, and what its cache saves: 3 classes x 200 CIFAR-10
training images (airplane, automobile, bird) written as 48x48 PNGs, one sub-folder per class.

    python bench/folder_demo.py OUT --data-dir DIR [--measure] [--memory N]

--measure then loads the folder as a sweep does, twice, in a fresh store: the first load
decodes every PNG (in parallel, into mlruns/images/), the second reads the cache, as the
second trial's worker, a rerun or another worker does; it prints both times in seconds.
--memory N writes N CIFAR-10 images as 64x64 PNGs into a temporary folder and prints the
decode and cache times and the process's peak memory after loading and after `prepare`
(float32 splits): where the in-memory line (search/data/folders.py IN_MEMORY_LIMIT) lies.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLASSES = (0, 1, 2)  # airplane, automobile, bird
PER_CLASS = 200
SIZE = (48, 48)


def write_demo(out: Path, data_dir) -> Path:
    import numpy as np

    from search.data import load_cifar10, write_image_folder

    data = load_cifar10(data_dir)
    pick = np.concatenate([np.flatnonzero(data.y_train == c)[:PER_CLASS] for c in CLASSES])
    return write_image_folder(out, data.x_train[pick], data.y_train[pick], data.label_names, size=SIZE)


def measure(folder: Path) -> dict:
    from search.config import DataConfig, FolderSource
    from search.data import load_folder

    config = DataConfig(source=FolderSource(folder=str(folder.resolve())), image_size=SIZE, val_size=60)
    os.chdir(tempfile.mkdtemp(prefix="bench-folder-"))  # a fresh mlruns/: nothing cached
    times = {}
    for name in ("first", "second"):
        start = time.perf_counter()
        data = load_folder(config)
        times[name] = {"seconds": round(time.perf_counter() - start, 3), "cached": data.cached,
                       "images": len(data.x_train) + len(data.x_test)}
    return times


def memory(n: int, data_dir) -> list[dict]:
    import subprocess

    from search.data import load_cifar10, write_image_folder

    data = load_cifar10(data_dir)
    folder = write_image_folder(Path(tempfile.mkdtemp(prefix="bench-folder-big-")) / "big", data.x_train[:n],
                                data.y_train[:n], data.label_names, size=(64, 64))
    os.chdir(tempfile.mkdtemp(prefix="bench-folder-"))
    # Each load in a fresh process, so its peak memory is its own.
    # Each load in a fresh process; tracemalloc counts numpy's buffers, and its peak is
    # what the process needed at once (ru_maxrss would hide it under the imports' peak).
    probe = f"""
import sys, time, tracemalloc
sys.path.insert(0, {str(ROOT)!r})
from search.config import DataConfig, FolderSource
from search.data import load_folder, prepare
config = DataConfig(source=FolderSource(folder={str(folder)!r}), val_size=500)
tracemalloc.start()
start = time.perf_counter(); data = load_folder(config); seconds = time.perf_counter() - start
loaded = tracemalloc.get_traced_memory()[1]
prepare(data, config)
print({{"cached": data.cached, "seconds": round(seconds, 2),
        "decoded_mib": round((data.x_train.nbytes + data.x_test.nbytes) / 2**20),
        "peak_mib_loading": round(loaded / 2**20), "peak_mib_with_prepare": round(tracemalloc.get_traced_memory()[1] / 2**20)}})
"""
    return [subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
            for _ in range(2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--measure", action="store_true")
    parser.add_argument("--memory", type=int, metavar="N")
    args = parser.parse_args()
    folder = write_demo(Path(args.out), args.data_dir)
    print(f"wrote {folder}")
    if args.measure:
        print(measure(folder))
    if args.memory:
        for line in memory(args.memory, args.data_dir):
            print(line)


if __name__ == "__main__":
    main()
