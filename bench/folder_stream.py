"""A folder trained in memory and streamed, on the same images: load time and training
throughput of each (the standard path, a small VGG, 2 epochs, CPU unless a GPU is there).

    python bench/folder_stream.py OUT [--images N]

writes N images (default 3,000; 10 classes, each a fixed colour pattern plus noise) as
64x64 PNGs into OUT/fold (kept for a rerun), then trains once with the default in-memory
limit and once with BLOCKSWEEP_IN_MEMORY_LIMIT=1000 (it streams), in a fresh store under
OUT; prints one JSON line per way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_folder(root: Path, n: int) -> None:
    import numpy as np

    from search.data import write_image_folder

    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 256, size=(10, 4, 4, 3))
    y = np.arange(n) % 10
    x = np.repeat(np.repeat(patterns[y], 16, axis=1), 16, axis=2) + rng.normal(0, 40, size=(n, 64, 64, 3))
    write_image_folder(root, np.clip(x, 0, 255).astype("uint8"), y, tuple(f"c{i}" for i in range(10)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--images", type=int, default=3000)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    (out / "mlruns").mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # the store (and its image cache) is ./mlruns
    if not (out / "fold").exists():
        write_folder(out / "fold", args.images)

    from search import backend

    backend.select(None)
    from search.config import run_config_from_dict
    from search.data import load_folder, prepare
    from search.training import train_and_evaluate

    config = run_config_from_dict({
        "model": {"family": "vgg", "blocks": 2, "filters": 8, "dense_units": 16},
        "data": {"source": {"folder": "fold"}, "val_size": 200, "test_fraction": 0.1,
                 "augment": {"flip": False, "translate": 0}},
        "train": {"epochs": 2, "batch_size": 128}})
    for limit in (str(1 << 30), "1000"):
        os.environ["BLOCKSWEEP_IN_MEMORY_LIMIT"] = limit
        start = time.perf_counter()
        splits = prepare(load_folder(config.data), config.data)
        loaded = time.perf_counter() - start
        result = train_and_evaluate(config, splits)
        print(json.dumps({"streamed": splits.streamed, "load_seconds": round(loaded, 2),
                          "train_seconds": round(result.train_seconds, 2),
                          "images_per_second": [round(h.get("images_per_second", 0)) for h in result.history],
                          "test_accuracy": round(result.test["test_accuracy"], 4)}), flush=True)


if __name__ == "__main__":
    main()
