"""Our fast trial against airbench94, on the same GPU, in one call.

    python bench/airbench_compare.py --data-dir DIR [--runs 5] [--epochs 9.9] [--out FOLDER]
    python bench/airbench_compare.py --quick            # CPU: tiny sizes, every code path

1. airbench94 (Keller Jordan; the PyPI sdist `airbench` 0.1.8 unpacked into the ignored
   bench/_vendor/, never committed) in a subprocess, from our CIFAR-10 converted to its
   format (`cifar10/train.pt`, `cifar10/test.pt`: dicts of uint8 NHWC images, int64
   labels and class names): one warm-up, then `--runs` runs; its own timer and its TTA
   accuracy on the 10,000 test images, parsed from its final table row. It needs CUDA;
   without it only the converter runs.
2. Our fast trial, airbench94's recipe (`spaces/vgg_fast.yaml`: 9.9 epochs, 476 steps)
   in airbench's benchmark mode (`data.val_size: 0`: all 50,000 training images train,
   no epoch is validated, the 10,000 test images are scored once at the end, with TTA),
   through the one trainer entry point `search.training.train_and_evaluate`: one warm-up
   run, which compiles into a fresh XLA cache (the cold compile time), then `--runs` runs
   (seeds 0..runs-1) that rebuild the model and load their executables from that cache.
   Time = wall time of the whole trial minus its compile time: model build, whitening,
   data upload, training and the TTA evaluation all count (airbench's timer counts its
   whitening, training and final TTA evaluation).
   One more run uses the other dispatch mode (one step per dispatch on a GPU, a fused
   epoch on a CPU), to see what fusing buys.
3. A bare jitted step of the same network (stateless call + SGD, one dispatch per step,
   one batch already on the device): the throughput ceiling our fused loop is held to.
4. The generic Keras-fit path of the recipe (`train.airbench.path: keras`) on the same
   backend, for its throughput.

Prints a markdown table last and writes everything as JSON to `--out`. The device-tool
commands (carrying wheels, data and airbench) are in bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VENDOR = ROOT / "bench" / "_vendor" / "airbench-0.1.8"

# Runs airbench94 in its own process (PyTorch; JAX is not imported there). argv: the
# unpacked sdist, the number of runs. Its table's last row holds the TTA accuracy and its
# own timer (whitening + training + final TTA evaluation); per-epoch plain evaluations run
# outside that timer, so `wall_seconds` is longer.
AIRBENCH_SCRIPT = r'''
import contextlib, io, json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
import airbench

def final_row(text):
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|")]
    head = next(r for r in rows if "tta_val_acc" in r)
    last = [r for r in rows if len(r) == len(head) and r[head.index("epoch")] == "eval"][-1]
    return float(last[head.index("tta_val_acc")]), float(last[head.index("total_time_seconds")])

with contextlib.redirect_stdout(io.StringIO()):
    airbench.warmup94()
results = []
for i in range(int(sys.argv[2])):
    out = io.StringIO()
    torch.cuda.synchronize()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        airbench.train94(run=i)
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    accuracy, seconds = final_row(out.getvalue())
    results.append({"tta_accuracy": accuracy, "seconds": seconds, "wall_seconds": wall})
print("AIRBENCH_JSON " + json.dumps({"runs": results, "torch": torch.__version__,
                                     "device": torch.cuda.get_device_name(0)}))
'''


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="folder with cifar-10-batches-py/ (required unless --quick)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--epochs", type=float, default=None, help="default: the space file's (airbench's 9.9)")
    parser.add_argument("--backend", default="jax", help="jax (all parts) or tensorflow/torch (generic path only)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"), help="folder for the JSON results")
    parser.add_argument("--airbench-dir", default=str(VENDOR), help="the unpacked airbench 0.1.8 sdist")
    parser.add_argument("--skip-airbench", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="CPU check of every code path: synthetic data (unless --data-dir), widths x1/8, "
                             "batch 256, 2 runs of 2.5 epochs")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.epochs = min(args.runs, 2), min(args.epochs or 2.5, 2.5)
    elif not args.data_dir:
        parser.error("--data-dir is required (or --quick)")
    return args


# --------------------------------------------------------------------------- data


def load_dataset(args):
    from search.data import Cifar10, load_cifar10

    if args.data_dir:
        data = load_cifar10(args.data_dir)
        if args.quick:  # a subset keeps the CPU run short
            data = Cifar10(data.x_train[:2048], data.y_train[:2048], data.x_test[:512], data.y_test[:512],
                           data.label_names, data.source)
        return data
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import synthetic_cifar  # the test suite's learnable stand-in

    x, y, tx, ty = synthetic_cifar(2048, 512)
    return Cifar10(x, y, tx, ty, ("airplane", "automobile", "bird", "cat", "deer",
                                  "dog", "frog", "horse", "ship", "truck"), "synthetic")


def write_airbench_data(dataset, folder: Path) -> Path:
    """Our CIFAR-10 in airbench's format: folder/cifar10/{train,test}.pt, each a dict of
    'images' (uint8 NHWC tensor), 'labels' (int64 tensor) and 'classes' (names)."""
    import torch

    out = folder / "cifar10"
    out.mkdir(parents=True, exist_ok=True)
    for name, x, y in (("train", dataset.x_train, dataset.y_train), ("test", dataset.x_test, dataset.y_test)):
        torch.save({"images": torch.from_numpy(x.copy()), "labels": torch.from_numpy(y.astype("int64")),
                    "classes": list(dataset.label_names)}, out / f"{name}.pt")
    return out


def check_airbench_data(folder: Path, dataset) -> None:
    """Read the files back as airbench does (weights-only torch.load) and compare."""
    import numpy as np
    import torch

    for name, x, y in (("train", dataset.x_train, dataset.y_train), ("test", dataset.x_test, dataset.y_test)):
        data = torch.load(folder / f"{name}.pt", weights_only=True)
        assert data["images"].dtype == torch.uint8 and tuple(data["images"].shape) == x.shape
        assert np.array_equal(data["images"].numpy(), x) and np.array_equal(data["labels"].numpy(), y)
        assert data["labels"].dtype == torch.int64 and list(data["classes"]) == list(dataset.label_names)


def run_airbench(args, dataset) -> dict:
    try:
        import torch
    except ImportError:
        return {"skipped": "PyTorch is not installed"}
    work = Path(tempfile.mkdtemp(prefix="airbench-"))
    check_airbench_data(write_airbench_data(dataset, work), dataset)
    if args.skip_airbench:
        return {"skipped": "--skip-airbench (converter checked)"}
    if not torch.cuda.is_available():
        return {"skipped": "airbench94 needs CUDA (converter checked)"}
    if not (Path(args.airbench_dir) / "airbench" / "lib_airbench94.py").exists():
        return {"skipped": f"{args.airbench_dir} is not the unpacked airbench 0.1.8 sdist (see bench/README.md)"}
    proc = subprocess.run([sys.executable, "-c", AIRBENCH_SCRIPT, str(Path(args.airbench_dir).resolve()),
                           str(args.runs)], cwd=work, capture_output=True, text=True, timeout=900)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("AIRBENCH_JSON ")), None)
    if proc.returncode or line is None:
        return {"error": (proc.stderr or proc.stdout)[-3000:]}
    return json.loads(line.split(" ", 1)[1])


# --------------------------------------------------------------------------- ours


def fast_config(args, seed: int, **more):
    """airbench94's recipe as spaces/vgg_fast.yaml has it, in airbench's benchmark mode:
    no validation split (`data.val_size: 0`), the test set scored at the end."""
    from search.config import load_spec

    overrides = {"data.val_size": 0, "train.seed": seed}
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    if args.quick:
        overrides.update({"model.width_multiplier": 0.125, "train.airbench.batch_size": 256,
                          "train.airbench.eval_batch_size": 256})
    overrides.update(more)
    return load_spec(ROOT / "spaces" / "vgg_fast.yaml", overrides).base_config()


def middle_rate(history) -> float:
    """Training throughput: the median over the epochs between the first (pipeline start)
    and the last (partial, and followed by the test evaluation), or whatever there is."""
    rates = [h["images_per_second"] for h in history]
    inner = rates[1:-1] or rates[1:] or rates
    return statistics.median(inner)


def run_ours(args, splits) -> dict:
    from search.training import train_and_evaluate

    def one(seed, **more):
        config = fast_config(args, seed, **more)
        start = time.perf_counter()
        result = train_and_evaluate(config, splits)
        wall = time.perf_counter() - start
        first = result.history[0]
        return {"seed": seed, "state": result.state.value, "tta_accuracy": result.test.get("test_tta_accuracy"),
                "accuracy": result.test.get("test_accuracy"), "wall_seconds": wall,
                "compile_seconds": first["compile_seconds"], "setup_seconds": first["setup_seconds"],
                "seconds": wall - first["compile_seconds"], "train_seconds": result.train_seconds,
                "images_per_second": middle_rate(result.history)}

    import jax

    warmup = one(1000)
    runs = [one(seed) for seed in range(args.runs)]
    # The other dispatch mode, once (a fresh compile): one step per dispatch where the
    # default fuses an epoch (accelerators), a whole epoch where it does not (CPUs).
    steps = fast_config(args, 0)
    per_epoch = len(splits.x_train) // min(steps.train.airbench.batch_size, len(splits.x_train))
    other = 1 if jax.default_backend() != "cpu" else per_epoch
    variant = {"steps_per_dispatch": other, **one(0, **{"train.airbench.steps_per_dispatch": other})}
    return {"warmup": warmup, "runs": runs, "other_dispatch": variant}


def bare_step_rate(args, splits, steps: int, repeats: int = 3) -> dict:
    """Images/s of the plainest jitted training step of the same network: stateless call,
    label-smoothed loss, gradients, Nesterov SGD; one dispatch per step on one batch that
    already sits on the device. No augmentation, lookahead or loss read-back."""
    import jax
    import jax.numpy as jnp
    import keras

    from search import models
    from search.training.airbench import recipe
    from search.training.components import precision_policy

    config = fast_config(args, 0)
    r = config.train.airbench
    keras.mixed_precision.set_dtype_policy(precision_policy(config))
    net = models.build_model(config.model, splits.input_shape, splits.num_classes)
    model = recipe.logits_model(net)
    batch = min(r.batch_size, len(splits.x_train))
    dtype = jnp.bfloat16 if precision_policy(config) == "mixed_bfloat16" else jnp.float32
    x = jax.device_put(splits.x_train[:batch]).astype(dtype)
    y = jnp.asarray(recipe.int_labels(splits.y_train[:batch]))

    def step(tv, ntv, velocity, x, y):
        def loss_fn(tv, ntv):
            logits, ntv = model.stateless_call(tv, ntv, x, training=True)
            return recipe.smoothed_cross_entropy(logits, y, r.label_smoothing, 10).mean(), ntv

        (loss, ntv), grads = jax.value_and_grad(loss_fn, has_aux=True)(tv, ntv)
        new = [recipe.sgd_update(w, g, v, 0.1, r.momentum, True, r.weight_decay)
               for w, g, v in zip(tv, grads, velocity)]
        return [w for w, _ in new], ntv, [v for _, v in new], loss

    step = jax.jit(step)
    tv = [jnp.asarray(v.value) for v in model.trainable_variables]
    ntv = [jnp.asarray(v.value) for v in model.non_trainable_variables]
    velocity = [jnp.zeros_like(w) for w in tv]
    start = time.perf_counter()
    tv, ntv, velocity, loss = step(tv, ntv, velocity, x, y)
    loss.block_until_ready()
    compile_seconds = time.perf_counter() - start
    for _ in range(3):
        tv, ntv, velocity, loss = step(tv, ntv, velocity, x, y)
    loss.block_until_ready()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            tv, ntv, velocity, loss = step(tv, ntv, velocity, x, y)
        loss.block_until_ready()
        rates.append(steps * batch / (time.perf_counter() - start))
    return {"images_per_second": statistics.median(rates), "batch": batch, "steps": steps,
            "compile_seconds": compile_seconds}


def generic_rate(args, splits) -> dict:
    """The recipe through Keras fit (`train.airbench.path: keras`), 2+ epochs."""
    from search.training import train_and_evaluate

    epochs = max(2, min(fast_config(args, 0).train.epochs, 3))
    config = fast_config(args, 0, **{"train.airbench.path": "keras", "train.epochs": epochs})
    start = time.perf_counter()
    result = train_and_evaluate(config, splits)
    return {"images_per_second": middle_rate(result.history), "wall_seconds": time.perf_counter() - start,
            "tta_accuracy": result.test.get("test_tta_accuracy")}


# --------------------------------------------------------------------------- main


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(args)
    report: dict = {"date": time.strftime("%Y-%m-%d"), "quick": args.quick,
                    "epochs": fast_config(args, 0).train.epochs,
                    "train_images": len(dataset.x_train), "test_images": len(dataset.x_test)}

    # airbench first, in its own process, before JAX claims the GPU's memory.
    report["airbench"] = run_airbench(args, dataset)

    from search import backend

    name = backend.select(args.backend)
    report["backend"] = name
    from search.data import prepare

    splits = prepare(dataset, fast_config(args, 0).data)  # every training image; the whole test set
    if name == "jax":
        import jax

        # A fresh persistent cache: the warm-up run pays the cold compile, the timed runs
        # load from the cache (as later trials of a sweep do).
        jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="xla-cache-"))
        report["device"] = str(jax.devices()[0].device_kind)
        report["ours"] = run_ours(args, splits)
        report["bare_step"] = bare_step_rate(args, splits, steps=10 if args.quick else 50)
    report["generic"] = generic_rate(args, splits)
    (out / "airbench_compare.json").write_text(json.dumps(report, indent=2))
    print(table(report))


def table(report: dict) -> str:
    lines = [f"date {report['date']}, backend {report['backend']}, device {report.get('device', 'n/a')}, "
             f"{report['train_images']} training images, {report['epochs']} epochs"
             + (" (--quick: tiny sizes, not comparable)" if report["quick"] else ""),
             "", "| what | mean TTA acc | min TTA acc | median time (s) | compile (s) | img/s |",
             "| --- | --- | --- | --- | --- | --- |"]
    ab = report["airbench"]
    if "runs" in ab:
        accs = [r["tta_accuracy"] for r in ab["runs"]]
        secs = [r["seconds"] for r in ab["runs"]]
        lines.append(f"| airbench94 ({len(accs)} runs, own timer) | {statistics.mean(accs):.4f} | {min(accs):.4f} "
                     f"| {statistics.median(secs):.3f} | - | - |")
    else:
        lines.append(f"| airbench94 | {ab.get('skipped') or 'error: see JSON'} | | | | |")
    ours = report.get("ours")
    if ours:
        runs = ours["runs"]
        accs = [r["tta_accuracy"] for r in runs]
        secs = [r["seconds"] for r in runs]
        lines.append(f"| ours, fused JAX ({len(runs)} runs, wall - compile) | {statistics.mean(accs):.4f} "
                     f"| {min(accs):.4f} | {statistics.median(secs):.3f} "
                     f"| cold {ours['warmup']['compile_seconds']:.1f}, cached "
                     f"{statistics.median(r['compile_seconds'] for r in runs):.1f} "
                     f"| {statistics.median(r['images_per_second'] for r in runs):,.0f} |")
        v = ours["other_dispatch"]
        lines.append(f"| ours, {v['steps_per_dispatch']} step(s) per dispatch (1 run) | {v['tta_accuracy']:.4f} | - "
                     f"| {v['seconds']:.3f} | {v['compile_seconds']:.1f} | {v['images_per_second']:,.0f} |")
    if "bare_step" in report:
        b = report["bare_step"]
        lines.append(f"| bare jitted step | - | - | - | {b['compile_seconds']:.1f} | {b['images_per_second']:,.0f} |")
    g = report["generic"]
    lines.append(f"| generic path (Keras fit) | - | - | - | - | {g['images_per_second']:,.0f} |")
    if ours and "runs" in ab:
        ratio = statistics.median(r["seconds"] for r in ours["runs"]) / statistics.median(
            r["seconds"] for r in ab["runs"])
        lines.append(f"\ntime ratio ours / airbench94 (medians): {ratio:.2f} (target <= 1.0)")
    if ours and "bare_step" in report:
        share = statistics.median(r["images_per_second"] for r in ours["runs"]) / report["bare_step"][
            "images_per_second"]
        lines.append(f"trainer throughput / bare jitted step: {share:.2f} (target >= 0.9)")
    return "\n".join(lines)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
