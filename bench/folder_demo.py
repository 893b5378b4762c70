"""spaces/folder_demo.yaml's folder, and what its cache saves: 3 classes x 200 CIFAR-10
training images (airplane, automobile, bird) written as 48x48 PNGs, one sub-folder per class.

    python bench/folder_demo.py OUT --data-dir DIR [--measure]

--measure then loads the folder as a sweep does, twice, in a fresh store: the first load
decodes every PNG (in parallel, into mlruns/images/), the second reads the cache, as the
second trial's worker, a rerun or another worker does; it prints both times in seconds.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--measure", action="store_true")
    args = parser.parse_args()
    folder = write_demo(Path(args.out), args.data_dir)
    print(f"wrote {folder}")
    if args.measure:
        print(measure(folder))


if __name__ == "__main__":
    main()
