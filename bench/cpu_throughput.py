"""Training images/s on a CPU, TensorFlow: our airbench trainer against a bare `model.fit`
and a bare compiled step of the same Keras model on the same data, and the machine's peak.

    python3 bench/cpu_throughput.py --data-dir /tmp/cifar [--space spaces/quickstart.yaml]
        [--set key=value ...] [--precisions float32,mixed_bfloat16] [--steps 30] [--rounds 3]

The configuration is the space's own (the quickstart's default, which its sweep trains
first); `--set` gives another (e.g. the best trial's values from `blocksweep compare`).
For each precision, one network is built and three ways of training it take turns,
`--rounds` times, each `--steps` optimiser steps on the space's training split:

- trainer: `TensorFlowTrainer.train_steps` as a trial runs it (crops cut in the graph from
  the resident images, RecipeSGD, the lookahead, losses read at the end);
- fit: a bare `model.fit` of the same compiled Keras model (logits, RecipeSGD, the loss)
  over the same number of already augmented images (NumPy arrays), no callbacks;
- step: a bare `tf.function` of forward, loss, gradients and RecipeSGD on one resident
  batch (no augmentation, no lookahead): the arithmetic alone;
- keras_path: the recipe's Keras fit path (`train.airbench.path: keras`, what TensorFlow
  ran before the compiled trainer): the epoch augmented in NumPy, fit with the lookahead
  and loss callbacks.

Taking turns spreads a shared machine's load over the three alike; the load average is
recorded with every timing, and so are the process's CPU seconds (images per CPU-second x
cores: what the work would run at with the cores to itself, an estimate a shared
machine's load barely moves). Peak: cores x AVX-512 FMA units per core x 2 (multiply and
add) x 16 fp32 lanes x clock (GHz), from lscpu; FLOPs per training image: 3 x the forward
multiply-adds x 2 of every convolution and dense layer (the backward pass costs two
forwards). Writes bench/results/cpu_throughput-DATE.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- the machine


def lscpu() -> dict:
    """`lscpu`'s fields as a dict (empty where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)}


def fma_units(info: dict) -> int:
    """AVX-512 FMA units per core: AMD Zen 4 (family 25) runs a 512-bit FMA on its two
    256-bit pipes, one per cycle; Intel's server cores (Skylake-SP Gold/Platinum and
    later) have two 512-bit units. Where unknown, two (the upper bound)."""
    if info.get("Vendor ID") == "AuthenticAMD" and info.get("CPU family") == "25":
        return 1
    return 2


def clock_ghz(info: dict) -> tuple[float, str]:
    """The core clock and where it came from: lscpu's max MHz, else half the BogoMIPS
    (the kernel counts two per cycle on x86), else /proc/cpuinfo's current MHz."""
    if info.get("CPU max MHz"):
        return float(info["CPU max MHz"]) / 1000, "lscpu CPU max MHz"
    if info.get("BogoMIPS"):
        return float(info["BogoMIPS"]) / 2000, "lscpu BogoMIPS / 2"
    text = Path("/proc/cpuinfo").read_text()
    return float(re.search(r"cpu MHz\s*:\s*([\d.]+)", text).group(1)) / 1000, "/proc/cpuinfo cpu MHz"


def peak(info: dict) -> dict:
    cores = int(info.get("Core(s) per socket", os.cpu_count() or 1)) * int(info.get("Socket(s)", 1))
    cores = min(cores, len(os.sched_getaffinity(0)))
    units = fma_units(info)
    ghz, source = clock_ghz(info)
    fp32 = cores * units * 2 * 16 * ghz
    flags = info.get("Flags", "").split()
    return {"cpu": info.get("Model name", platform.processor()), "cores": cores, "fma_units_per_core": units,
            "clock_ghz": round(ghz, 3), "clock_source": source, "avx512f": "avx512f" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "peak_fp32_gflops": round(fp32, 1),
            # vdpbf16ps: two bf16 products per fp32 lane
            "peak_bf16_gflops": round(2 * fp32, 1) if "avx512_bf16" in flags else None,
            "formula": f"{cores} cores x {units} AVX-512 FMA units x 2 x 16 fp32 lanes x {ghz:.3f} GHz ({source})"}


def load() -> float:
    return round(os.getloadavg()[0], 2)


# --------------------------------------------------------------------------- the model's work


def training_gflops(model) -> float:
    """GFLOPs to train on one image: 3 x 2 x the forward multiply-adds of the convolutions
    (the whitening stem included) and dense layers; batch-norm, activations and pooling
    are not counted (memory traffic, not FLOPs, is their cost)."""
    import keras

    macs = 0
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        out = layer.output.shape
        if isinstance(layer, keras.layers.Dense):
            macs += kernel.shape[0] * kernel.shape[1]
        else:  # a convolution: every output pixel and filter reads one kernel window
            macs += out[1] * out[2] * math.prod(kernel.shape)
    return 3 * 2 * macs / 1e9


# --------------------------------------------------------------------------- one precision


def measure(config, splits, steps: int, rounds: int) -> dict:
    import numpy as np
    import tensorflow as tf

    from search.training.airbench.keras_path import KerasTrainer
    from search.training.airbench.recipe import augment, smoothed_cross_entropy
    from search.training.airbench.tensorflow_path import TensorFlowTrainer
    from search.training.components import trial_setup

    with trial_setup(config):
        trainer = TensorFlowTrainer(config, splits)
        model, b = trainer.model, trainer.batch_size
        steps = min(steps, trainer.steps_per_epoch)
        images = b * steps
        plan, labels = trainer.epoch_data(0)
        # fit's data: the same crops, made once on the host (KerasTrainer's NumPy path)
        index, offsets, flips = (p.numpy()[:images] for p in plan)
        x_fit = augment(np, trainer.padded, index, offsets, flips, splits.x_train.shape[1])
        y_fit = labels.numpy()[:images]
        xb, yb = tf.constant(x_fit[:b]), tf.constant(y_fit[:b])
        variables = model.trainable_variables
        optimizer = model.optimizer

        @tf.function(jit_compile=False)
        def bare_step(x, y):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(smoothed_cross_entropy(model(x, training=True), y,
                                                             config.train.airbench.label_smoothing, 10))
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        # the Keras fit path (`train.airbench.path: keras`): the same network, its epoch
        # augmented in NumPy, fit with the lookahead and loss callbacks
        keras_fit = KerasTrainer(config, splits, net=trainer.net)

        def run_trainer():
            trainer.read_train(trainer.train_steps(plan, labels, 0, steps))

        def run_keras_path():  # its NumPy augmentation of the images these steps train on
            index, offsets, flips = (a[:images] for a in keras_fit.epoch_plan(0))
            x = augment(np, keras_fit.padded, index, offsets, flips, splits.x_train.shape[1])
            keras_fit.read_train(keras_fit.train_steps(x, keras_fit.labels[index], 0, steps))

        def run_fit():
            model.fit(x_fit, y_fit, batch_size=b, epochs=1, shuffle=False, verbose=0)

        def run_step():
            for _ in range(steps):
                loss = bare_step(xb, yb)
            float(loss)

        ways = {"trainer": run_trainer, "fit": run_fit, "step": run_step, "keras_path": run_keras_path}
        warm = time.perf_counter()
        trainer.read_train(trainer.train_steps(plan, labels, 0, 2))  # first calls: graph optimisation
        model.fit(x_fit[:2 * b], y_fit[:2 * b], batch_size=b, epochs=1, shuffle=False, verbose=0)
        bare_step(xb, yb)
        keras_fit.train_steps(x_fit, y_fit, 0, 2)
        warm = time.perf_counter() - warm
        timings = {name: [] for name in ways}
        for _ in range(rounds):
            for name, run in ways.items():
                before, cpu, start = load(), time.process_time(), time.perf_counter()
                run()
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu
                timings[name].append({"images_per_second": round(images / wall, 1), "seconds": round(wall, 3),
                                      "cpu_seconds": round(cpu, 3), "load_before": before, "load_after": load()})
        gflops = training_gflops(model)
        result = {"batch_size": b, "steps": steps, "images": images, "warm_up_seconds": round(warm, 1),
                  "gflop_per_training_image": round(gflops, 5), "timings": timings}
        cores = len(os.sched_getaffinity(0))
        for name, runs in timings.items():
            rate = statistics.median(r["images_per_second"] for r in runs)
            # What the same work would take with every core to itself: the process's CPU
            # seconds spread over the cores (an estimate that a shared machine's load
            # barely moves; on an idle machine the wall-time rate should come close).
            idle = statistics.median(images / (r["cpu_seconds"] / cores) for r in runs)
            result[name] = {"images_per_second": rate, "gflops": round(rate * gflops, 1),
                            "images_per_cpu_second_x_cores": round(idle, 1)}
        # paired: each round's trainer against the fit and step timed next to it
        result["trainer_vs_fit"] = round(statistics.median(
            t["images_per_second"] / f["images_per_second"] for t, f in zip(timings["trainer"], timings["fit"])), 3)
        result["trainer_vs_keras_path"] = round(statistics.median(
            t["images_per_second"] / k["images_per_second"]
            for t, k in zip(timings["trainer"], timings["keras_path"])), 3)
        result["trainer_vs_step"] = round(statistics.median(
            t["images_per_second"] / s["images_per_second"] for t, s in zip(timings["trainer"], timings["step"])), 3)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="holds cifar-10-batches-py/ (or is it)")
    parser.add_argument("--space", default=str(ROOT / "spaces" / "quickstart.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--steps", type=int, default=30, help="optimiser steps per timing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()

    from search import backend

    backend.select("tensorflow")
    import keras
    import tensorflow as tf

    from search.config import load_spec, parse_overrides
    from search.data import load_cifar10, prepare

    started = datetime.datetime.now(datetime.timezone.utc)
    machine = peak(lscpu())
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    base = load_spec(args.space, parse_overrides(args.set)).base_config()
    splits = prepare(load_cifar10(args.data_dir), base.data)
    results = {}
    for precision in args.precisions.split(","):
        config = load_spec(args.space, {**parse_overrides(args.set), "train.precision": precision}).base_config()
        results[precision] = measure(config, splits, args.steps, args.rounds)
        print(f"{precision}: {json.dumps({k: v for k, v in results[precision].items() if k != 'timings'})}",
              flush=True)
    summary = {"date": started.isoformat(timespec="seconds"), "space": os.path.relpath(args.space, ROOT),
               "set": args.set, "filters": list(base.model.filters) if base.model.filters else None,
               "width_multiplier": base.model.width_multiplier, "train_images": len(splits.x_train),
               "tensorflow": tf.__version__, "keras": keras.__version__, "onednn": os.environ.get(
                   "TF_ENABLE_ONEDNN_OPTS", "default (on)"), "machine": machine, "uptime_before": uptime_before,
               "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
               "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"cpu_throughput-{started:%Y-%m-%dT%H%M}.json"
    path.write_text(json.dumps(summary, indent=1))

    print(f"\n{started:%Y-%m-%d %H:%M} UTC, {machine['cpu']}, {machine['formula']} = "
          f"{machine['peak_fp32_gflops']} GFLOP/s fp32 peak; {summary['uptime_before']}")
    print("| precision | way | images/s (median) | GFLOP/s | share of peak | trainer / this | "
          "images per CPU-second x cores |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for precision, r in results.items():
        top = machine["peak_bf16_gflops"] if precision == "mixed_bfloat16" and machine["peak_bf16_gflops"] else \
            machine["peak_fp32_gflops"]
        for name in ("trainer", "fit", "step", "keras_path"):
            ratio = {"trainer": 1.0, "fit": r["trainer_vs_fit"], "step": r["trainer_vs_step"],
                     "keras_path": r["trainer_vs_keras_path"]}[name]
            print(f"| {precision} | {name} | {r[name]['images_per_second']:,.0f} | {r[name]['gflops']} | "
                  f"{r[name]['gflops'] / top:.0%} | {ratio:.2f}x | {r[name]['images_per_cpu_second_x_cores']:,.0f} |")
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
