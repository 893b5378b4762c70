"""Images per second of the training step for the default VGG on this device.

    python bench/throughput.py [--backend auto|tensorflow|jax|torch] [--batch 128] [--steps 50]

Synthetic CIFAR-shaped data (throughput does not depend on pixel values). Warm-up first
(compilation), then `--repeats` timed runs of `--steps` steps; prints the median.
Measured on the 2-core development CPU (2026-11-26): see BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from search import backend

    name = backend.select(args.backend)
    import keras
    import numpy as np

    from search.backend import device_kind
    from search.config import RunConfig
    from search.models import vgg
    from search.training.components import loss_function, optimizer, precision_policy

    config = RunConfig(model=vgg.Config())
    keras.mixed_precision.set_dtype_policy(precision_policy(config))
    model = vgg.build(config.model, (32, 32, 3), 10)
    model.compile(optimizer=optimizer(config, args.steps), loss=loss_function(config))
    n = args.batch * args.steps
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=n)

    model.fit(x[: args.batch * 3], y[: args.batch * 3], batch_size=args.batch, epochs=1, verbose=0)  # compile
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0, shuffle=False)
        rates.append(n / (time.perf_counter() - start))
    print(f"| backend | device | precision | batch | images/s (median of {args.repeats}) |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| {name} | {device_kind()} | {precision_policy(config)} | {args.batch} | {statistics.median(rates):,.0f} |")


if __name__ == "__main__":
    main()
