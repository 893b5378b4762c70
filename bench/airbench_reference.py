"""airbench94 itself against our trainer, step by step, on the CPU in float32.

    python bench/airbench_reference.py --data-dir DIR [--widths 16,64,64] [--batch 512]
        [--images 5120] [--epochs 9.9] [--path fused|keras] [--raw-init] [--out FOLDER]

1. airbench 0.1.8 (the PyPI sdist; unpacked into the ignored bench/_vendor/, fetched with
   pip when absent, never committed).
2. airbench94's own training loop, `train94` -> `train` (airbench/lib_airbench94.py,
   airbench/utils.py), on the first `--images` CIFAR-10 training images, with
   `make_net94` at `--widths` and its loader at `--batch` (airbench's code is the same at
   any width; full width at batch 1024 takes hours on a 2-core CPU). For this run only,
   and without touching the files: `.cuda()` leaves tensors and modules where they are,
   `.half()` makes float32, CUDA timing events and `synchronize` do nothing, and its
   loaders read onto the CPU. Recorded: the weights it starts from (after its whitening
   init), every batch its loader yields, every step's outputs, the weights after chosen
   steps and the returned model.
3. Our trainer (`--path fused`: the fused JAX loop; `keras`: Keras fit; both under JAX)
   with spaces/vgg_fast.yaml at the same widths and batch (learning rate 1.5 * batch /
   1024: airbench's step at that batch in our units), starting from airbench's weights
   (layouts converted) and fed airbench's batches in airbench's order, one step at a time.
   Our whitening filters, computed from the same 5,000 images, are compared with
   airbench's first; training then starts from airbench's, so both start identical.
4. The control: our trainer once more, from airbench's weights each moved by one float32
   ulp. How far apart it and our first run drift is what float32 rounding alone does to
   this training (a small network at airbench's learning rates amplifies it), the floor
   against which the distance to airbench is read.
5. Prints each step's loss (airbench's: its summed loss / batch, as its log prints it),
   the largest relative weight difference after 1, 10, 50 steps and at the end (after
   the final lookahead), batch-norm statistics apart, to airbench and to the control, and
   the final models' accuracy on the first `--test-images` test images, plain and with TTA.

By default `make_net` (a parameter of `train94`) also whitens the net it returns, so that
airbench's lookahead EMA, which `train` copies before it whitens, starts from the
whitening filters as ours does. `--raw-init` leaves make_net94's random filters for the
EMA: airbench's own order, whose first sync moves the frozen filters by
d5 * (random - filters), d5 = 0.95**5 * (5 / total)**3 (9e-7 at airbench's 476 steps,
1e-4 at 99).

Results and the exact command: BENCHMARKS.md, "airbench94 step by step on the CPU".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tarfile
import time
import types
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VENDOR = ROOT / "bench" / "_vendor"
SDIST = "airbench-0.1.8"
VGG_FAST = ROOT / "spaces" / "vgg_fast.yaml"
AT_STEPS = (1, 10, 50)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder with cifar-10-batches-py/")
    parser.add_argument("--widths", default="16,64,64", help="block widths (airbench94: 64,256,256)")
    parser.add_argument("--batch", type=int, default=512, help="batch size (airbench94: 1024)")
    parser.add_argument("--images", type=int, default=5120, help="training images (>= 5,000, the whitening's)")
    parser.add_argument("--epochs", type=float, default=9.9)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--path", choices=("fused", "keras"), default="fused")
    parser.add_argument("--raw-init", action="store_true",
                        help="airbench's lookahead EMA starts from make_net94's random whitening weights")
    parser.add_argument("--contiguous", action="store_true",
                        help="airbench's tensors in the default memory format, not channels_last (on a CPU "
                             "torch's channels-last float32 kernels round more: see the first step's gradients)")
    parser.add_argument("--dither", action="store_true",
                        help="add uniform noise of +-0.5/255 to the training images (both runs see the same): "
                             "no exactly tied maxima for the max-poolings to break")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    return parser.parse_args()


# --------------------------------------------------------------------------- 1. airbench's sdist


def unpack_airbench(folder: Path = VENDOR) -> Path:
    """The unpacked sdist, fetched with pip and unpacked on first use."""
    source = folder / SDIST
    if (source / "airbench" / "lib_airbench94.py").exists():
        return source
    tarball = folder / f"{SDIST}.tar.gz"
    if not tarball.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "airbench==0.1.8", "-d", str(folder)], check=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(folder, filter="data")
    return source


def torchvision_if_absent() -> None:
    """airbench/utils.py imports torchvision for `transforms.Normalize` (and for
    `datasets.CIFAR10`, which it calls only when its train.pt is missing; ours is written
    first). Where torchvision is not installed, Normalize as torchvision defines it:
    (x - mean) / std per channel, on a copy."""
    try:
        import torchvision  # noqa: F401
        return
    except ImportError:
        pass

    class Normalize:
        def __init__(self, mean, std):
            self.mean, self.std = mean, std

        def __call__(self, tensor):
            import torch

            mean = torch.as_tensor(self.mean, dtype=tensor.dtype).view(-1, 1, 1)
            std = torch.as_tensor(self.std, dtype=tensor.dtype).view(-1, 1, 1)
            return tensor.clone().sub_(mean).div_(std)

    shim = types.ModuleType("torchvision")
    shim.transforms = types.SimpleNamespace(Normalize=Normalize)
    shim.datasets = types.SimpleNamespace()
    sys.modules["torchvision"] = shim
    sys.modules["torchvision.transforms"] = shim.transforms


# --------------------------------------------------------------------------- 2. airbench94's run


@contextlib.contextmanager
def on_the_cpu_in_float32(utils, contiguous: bool = False):
    """For the duration of the block: .cuda() is the identity, .half() gives float32,
    CUDA timing events and synchronize do nothing, CifarLoader maps its file to the CPU
    (`train` makes its test loader for device 0); with `contiguous`, torch.channels_last
    is the default memory format. Nothing on disk changes."""
    import torch

    class Event:  # torch.cuda.Event(enable_timing=True), timed on the host
        def __init__(self, **kwargs):
            self.at = 0.0

        def record(self):
            self.at = time.perf_counter()

        def elapsed_time(self, end):
            return 1e3 * (end.at - self.at)

    class CpuLoader(utils.CifarLoader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "gpu": "cpu"})

    patches = [(torch.Tensor, "cuda", lambda self, *a, **k: self),
               (torch.Tensor, "half", lambda self, *a, **k: self.float()),
               (torch.nn.Module, "cuda", lambda self, *a, **k: self),
               (torch.nn.Module, "half", lambda self: self.float()),
               (torch.cuda, "Event", Event), (torch.cuda, "synchronize", lambda *a, **k: None),
               (utils, "CifarLoader", CpuLoader)]
    if contiguous:
        patches.append((torch, "channels_last", torch.contiguous_format))
    with contextlib.ExitStack() as stack:
        for owner, name, value in patches:
            stack.enter_context(mock.patch.object(owner, name, value))
        yield CpuLoader


def state_of(net) -> dict:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


class Recorder:
    """What airbench's run did, seen through hooks on its net and a loader that records."""

    def __init__(self, at_steps):
        self.at = set(at_steps) | {0}
        self.weights: dict[int, dict] = {}  # after step k (0: after the whitening init)
        self.outputs: list = []  # each step's logits
        self.epochs: list[list] = []  # each epoch's (inputs, labels) batches, in order
        self.hooks = []
        self.seconds = 0.0  # airbench's whole run, its whitening included
        self.final: dict = {}  # the returned model, after the final lookahead

    def watch(self, net):
        def before(module, inputs):  # forward k runs after k optimiser steps
            if len(self.outputs) in self.at:
                self.weights[len(self.outputs)] = state_of(module)

        def after(module, inputs, outputs):
            self.outputs.append(outputs.detach().clone())

        self.hooks = [net.register_forward_pre_hook(before), net.register_forward_hook(after)]

    def stop(self):
        for hook in self.hooks:
            hook.remove()


def run_airbench(source: Path, work: Path, args, widths) -> tuple[Recorder, object, dict]:
    """airbench94's `train94` on `work`/cifar10/train.pt; returns the record, airbench's
    modules and the final state."""
    torchvision_if_absent()
    sys.path.insert(0, str(source))
    import torch

    import airbench.lib_airbench94 as lib94
    import airbench.utils as utils

    recorder = Recorder(AT_STEPS)

    class RecordingLoader(utils.CifarLoader):
        def __iter__(self):
            recorder.epochs.append([])
            for inputs, labels in super().__iter__():
                recorder.epochs[-1].append((inputs, labels))
                yield inputs, labels

    with contextlib.chdir(work), on_the_cpu_in_float32(utils, args.contiguous):
        loader = RecordingLoader("cifar10", train=True, batch_size=args.batch, aug=lib94.hyp["aug"], altflip=True,
                                 gpu="cpu")
        if args.dither:  # before the first epoch, which is when CifarLoader allows it
            loader.images = loader.images + (torch.rand_like(loader.images) - 0.5) / 255

        def make_net():
            net = lib94.make_net94(widths=dict(zip(("block1", "block2", "block3"), widths)))
            if not args.raw_init:  # the EMA that `train` copies next starts from the filters
                utils.init_whitening_conv(net[0], loader.normalize(loader.images[:5000]))
            recorder.watch(net)
            return net

        started = time.perf_counter()
        model = lib94.train94(train_loader=loader, epochs=args.epochs, make_net=make_net, verbose=False)
        recorder.seconds = time.perf_counter() - started
        recorder.stop()
        recorder.final = state_of(model)
        test = utils.CifarLoader("cifar10", train=False, batch_size=2000)
        recorder.test_logits = {level: utils.infer(model, test, tta_level=level) for level in (0, 2)}
        recorder.test_labels = test.labels
        recorder.train_images = loader.normalize(loader.images)
        recorder.first_gradients = first_gradients(lib94, widths, recorder)
    return recorder, lib94, utils


def first_gradients(lib94, widths, recorder: Recorder) -> dict:
    """The gradients of airbench's first step (its summed loss on its first batch, from its
    starting weights), in float32 as its run computed them and in float64 (the reference
    for both trainers' float32 rounding)."""
    import torch
    import torch.nn.functional as F

    inputs, labels = recorder.epochs[0][0]
    out = {}
    for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
        net = lib94.make_net94(widths=dict(zip(("block1", "block2", "block3"), widths)))
        net.load_state_dict(recorder.weights[0])
        net = net.to(dtype)
        net.train()
        x = inputs.to(dtype)
        F.cross_entropy(net(x), labels, label_smoothing=lib94.hyp["opt"]["label_smoothing"],
                        reduction="sum").backward()
        out[name] = {k: p.grad.detach().double() for k, p in net.named_parameters() if p.grad is not None}
    return out


def airbench_losses(recorder: Recorder, smoothing: float) -> list[float]:
    """Each step's loss as airbench's log states it: its summed loss / batch size."""
    import torch.nn.functional as F

    labels = [y for epoch in recorder.epochs for _, y in epoch]
    return [float(F.cross_entropy(out, y, label_smoothing=smoothing, reduction="sum")) / len(y)
            for out, y in zip(recorder.outputs, labels)]


# --------------------------------------------------------------------------- 3. ours, same start, same batches


def weight_pairs(net, blocks: int = 3):
    """(airbench's state_dict key, our Keras variable, layout of airbench's tensor) for
    every weight both nets have; batch-norm statistics marked apart."""
    pairs = [("0.weight", net.get_layer("stem_whiten").kernel, "conv"),
             ("0.bias", net.get_layer("stem_whiten").bias, "vector")]
    for i in range(blocks):
        for k in (1, 2):
            pairs.append((f"{2 + i}.conv{k}.weight", net.get_layer(f"block{i + 1}_conv{k}").kernel, "conv"))
            bn = net.get_layer(f"block{i + 1}_bn{k}")
            pairs += [(f"{2 + i}.norm{k}.bias", bn.beta, "vector"),
                      (f"{2 + i}.norm{k}.running_mean", bn.moving_mean, "statistic"),
                      (f"{2 + i}.norm{k}.running_var", bn.moving_variance, "statistic")]
    pairs.append((f"{4 + blocks}.weight", net.get_layer("classifier").kernel, "dense"))  # after pool, flatten
    return pairs


def keras_layout(tensor, layout: str):
    """An airbench tensor as our variable holds it: OIHW -> HWIO, (out, in) -> (in, out)."""
    array = tensor.numpy()
    if layout == "conv":
        return array.transpose(2, 3, 1, 0)
    return array.T if layout == "dense" else array


def differences(ours: dict, theirs: dict, pairs) -> dict:
    """Largest |ours - theirs| / max |theirs| over the weights, and over batch-norm
    statistics, with the worst tensor's name (both in our layout)."""
    import numpy as np

    out = {}
    for group in ("weights", "statistics"):
        rel = {key: float(np.abs(ours[key] - theirs[key]).max() / max(np.abs(theirs[key]).max(), 1e-30))
               for key, _, layout in pairs if (layout == "statistic") == (group == "statistics")}
        worst = max(rel, key=rel.get)
        out[group] = {"max": rel[worst], "where": worst}
    return out


def our_config(args, widths):
    """spaces/vgg_fast.yaml at the run's widths, batch and epochs, in float32; the learning
    rate is airbench's at this batch in our units (its step on the summed loss, 11.5 /
    kilostep_scale, is 1.5 * batch / 1024 on the mean loss)."""
    from search.config import load_spec

    overrides = {"model.filters": list(widths), "train.airbench.batch_size": args.batch,
                 "train.airbench.learning_rate": 1.5 * args.batch / 1024, "train.epochs": args.epochs,
                 "train.precision": "float32", "data.val_size": 0}
    return load_spec(VGG_FAST, overrides).base_config()


def whitening_check(theirs, images, config) -> dict:
    """Our whitening filters from `images` against airbench's (our layout). Filters j and
    j + d may come swapped (an eigenvector's sign is the solver's choice), and within a
    pair of nearly equal eigenvalues the eigenvectors themselves are ill-determined; the
    operator the filters apply, sum_j f_j f_j^T = (moment + eps I)^-1, is not."""
    import numpy as np

    from search.models.layers import whitening_kernel

    k, eps = config.model.whiten_kernel, config.model.whiten_eps
    mine = whitening_kernel(images, k, eps)
    signs = np.sign(np.sum(mine * theirs, axis=(0, 1, 2)))
    d = mine.shape[-1] // 2

    def operator(filters):
        f = filters.reshape(-1, 2 * d)[:, :d].astype(np.float64)
        return f @ f.T

    moment = np.zeros((d, d))  # in float64, 500 images at a time: the reference for both
    for start in range(0, len(images), 500):
        windows = np.lib.stride_tricks.sliding_window_view(images[start:start + 500].astype(np.float64), (k, k),
                                                           axis=(1, 2))
        patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, d)
        moment += patches.T @ patches
    exact = np.linalg.inv(moment / (len(images) * (images.shape[1] - k + 1) * (images.shape[2] - k + 1))
                          + eps * np.eye(d))

    def rel(a, b):
        return float(np.abs(a - b).max() / np.abs(b).max())

    return {"filters": rel(mine * signs, theirs), "operator": rel(operator(mine), operator(theirs)),
            "ours_vs_float64": rel(operator(mine), exact), "airbench_vs_float64": rel(operator(theirs), exact),
            "sign_flips": int(np.sum(signs[:d] < 0))}


def run_ours(args, config, recorder: Recorder, test_x, test_y, nudge: bool = False) -> dict:
    """Our trainer from airbench's starting weights (each moved by one float32 ulp when
    `nudge`), on airbench's batches in airbench's order, one step at a time."""
    import numpy as np
    from keras import ops

    from search import models
    from search.data import Splits
    from search.training.airbench import recipe
    from search.training.components import trial_setup

    x_train = recorder.train_images.permute(0, 2, 3, 1).numpy()
    y_train = np.zeros(len(x_train), np.int64)  # unused: training reads airbench's batches
    splits = Splits(x_train=x_train, y_train=y_train, x_val=x_train[:0], y_val=y_train[:0], x_test=test_x,
                    y_test=test_y, mean=(0.0,) * 3, std=(1.0,) * 3, label_names=tuple(str(i) for i in range(10)),
                    source="airbench's loader")
    with trial_setup(config):
        net = models.build_model(config.model, splits.input_shape, splits.num_classes)
        pairs = weight_pairs(net)
        for key, variable, layout in pairs:
            value = keras_layout(recorder.weights[0][key], layout)
            variable.assign(np.nextafter(value, np.float32(np.inf)) if nudge else value)
        gradients = None if nudge else our_first_gradients(net, pairs, recorder, config)
        if args.path == "fused":
            import jax.numpy as jnp

            from search.training.airbench.fused import FusedTrainer

            trainer, to_device = FusedTrainer(config, splits, net=net), jnp.asarray
        else:
            from search.training.airbench.keras_path import KerasTrainer

            trainer, to_device = KerasTrainer(config, splits, net=net), np.asarray
        assert (trainer.steps_per_epoch, trainer.total_steps) == (len(recorder.epochs[0]), len(recorder.outputs))

        def current():
            trainer.export()
            return {key: ops.convert_to_numpy(variable) for key, variable, _ in pairs}

        losses, weights, step = [], {}, 0
        started = time.perf_counter()
        for batches in recorder.epochs:
            shape = (trainer.batch_size * trainer.steps_per_epoch,)
            x = np.zeros(shape + x_train.shape[1:], np.float32)
            y = np.zeros(shape, np.int32)
            for s, (inputs, labels) in enumerate(batches):  # airbench's batches, NCHW -> NHWC
                x[s * trainer.batch_size:(s + 1) * trainer.batch_size] = inputs.permute(0, 2, 3, 1).numpy()
                y[s * trainer.batch_size:(s + 1) * trainer.batch_size] = labels.numpy()
            x, y = to_device(x), to_device(y)
            for s in range(len(batches)):
                loss, _ = trainer.read_train(trainer.train_steps(x, y, s, 1))
                losses.append(float(loss[0]))
                step += 1
                if step in AT_STEPS:
                    weights[step] = current()
        trainer.finish_lookahead()
        seconds = time.perf_counter() - started
        weights["final"] = current()
        model = recipe.logits_model(trainer.export())
        plain, tta = recipe.tta_logits(lambda v: model(v, training=False), ops.convert_to_tensor(test_x), 2)
    return {"pairs": pairs, "weights": weights, "losses": losses, "seconds": seconds, "gradients": gradients,
            "test_logits": {0: ops.convert_to_numpy(plain), 2: ops.convert_to_numpy(tta)}}


def our_first_gradients(net, pairs, recorder: Recorder, config) -> dict:
    """Our gradients of the same first step (the summed loss, to compare with airbench's),
    by airbench's key, in our layout."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from search.training.airbench import recipe

    model = recipe.logits_model(net)
    inputs, labels = recorder.epochs[0][0]
    x, y = jnp.asarray(inputs.permute(0, 2, 3, 1).numpy()), jnp.asarray(labels.numpy())
    ntv = [v.value for v in model.non_trainable_variables]
    smoothing = config.train.airbench.label_smoothing

    def loss(tv):
        logits, _ = model.stateless_call(tv, ntv, x, training=True)
        return recipe.smoothed_cross_entropy(logits, y, smoothing, 10).sum()

    grads = jax.grad(loss)([v.value for v in model.trainable_variables])
    by_path = {v.path: np.asarray(g, np.float64) for v, g in zip(model.trainable_variables, grads)}
    return {key: by_path[variable.path] for key, variable, _ in pairs if variable.path in by_path}


def gradient_errors(ours: dict, theirs: dict, pairs) -> dict:
    """The first step's float32 gradients, airbench's as run and ours, against airbench's
    float64 ones and against each other: per group (biases: the whitening and batch-norm
    biases; kernels: convolutions and the classifier), the largest |a - b| of a tensor
    over its largest |b|, and the worst tensor. A max pooling routes each window's
    gradient to its maximum, so where two values are within rounding of each other the
    float32 and float64 runs can route it to different pixels: kernels' gradients differ
    by that much, whoever computes them."""
    import numpy as np

    layout = {key: kind for key, _, kind in pairs}
    exact = {key: keras_layout(g, layout[key]) for key, g in theirs["float64"].items() if key in ours}
    as_run = {key: keras_layout(theirs["float32"][key], layout[key]) for key in exact}

    def worst(grads, reference):
        out = {}
        for group in ("biases", "kernels"):
            rel = {key: float(np.abs(grads[key] - reference[key]).max() / np.abs(reference[key]).max())
                   for key in exact if key.endswith("bias") == (group == "biases")}
            key = max(rel, key=rel.get)
            out[group] = {"max": rel[key], "where": key}
        return out

    return {"airbench": worst(as_run, exact), "ours": worst(ours, exact), "ours_vs_airbench": worst(ours, as_run)}


# --------------------------------------------------------------------------- 4. the comparison


def main() -> None:
    args = parse_args()
    widths = tuple(int(w) for w in args.widths.split(","))
    from search import backend

    backend.select("jax")  # before Keras is imported; torch and JAX share the process
    import numpy as np
    import torch

    from airbench_compare import write_airbench_data  # noqa: E402 - bench/ is the script's folder
    from search.data import Cifar10, load_cifar10

    source = unpack_airbench()
    data = load_cifar10(args.data_dir)
    subset = Cifar10(data.x_train[:args.images], data.y_train[:args.images], data.x_test[:args.test_images],
                     data.y_test[:args.test_images], data.label_names, data.source)
    work = Path(args.out) / "airbench_reference"
    write_airbench_data(subset, work)
    torch.manual_seed(0)
    recorder, lib94, _ = run_airbench(source, work, args, widths)
    mean = np.array([0.4914, 0.4822, 0.4465], np.float32)  # airbench/utils.py CIFAR_MEAN, CIFAR_STD
    std = np.array([0.2470, 0.2435, 0.2616], np.float32)
    test_x = ((subset.x_test.astype(np.float32) / 255 - mean) / std).astype(np.float32)
    test_y = subset.y_test.astype(np.int64)

    config = our_config(args, widths)
    ours = run_ours(args, config, recorder, test_x, test_y)
    control = run_ours(args, config, recorder, test_x, test_y, nudge=True)
    pairs = ours["pairs"]
    theirs = {step: {key: keras_layout(state[key], layout) for key, _, layout in pairs}
              for step, state in {**recorder.weights, "final": recorder.final}.items()}
    compared = {str(step): {"airbench": differences(w, theirs[step], pairs),
                            "nudged": differences(control["weights"][step], w, pairs)}
                for step, w in ours["weights"].items() if step in theirs}
    x_train = recorder.train_images.permute(0, 2, 3, 1).numpy()
    whitening = whitening_check(theirs[0]["0.weight"], x_train[:5000], config)
    gradients = gradient_errors(ours["gradients"], recorder.first_gradients, pairs)

    theirs_losses = airbench_losses(recorder, lib94.hyp["opt"]["label_smoothing"])
    labels = recorder.test_labels.numpy()
    views = {"plain": 0, "tta": 2}
    accuracy = {who: {view: float(np.mean(np.asarray(logits[level]).argmax(1) == labels))
                      for view, level in views.items()}
                for who, logits in (("airbench", recorder.test_logits), ("ours", ours["test_logits"]),
                                    ("nudged", control["test_logits"]))}
    logit_diff = {view: float(np.abs(ours["test_logits"][level] - recorder.test_logits[level].numpy()).max())
                  for view, level in views.items()}
    import jax
    import keras

    result = {"date": time.strftime("%Y-%m-%d"), "widths": widths, "batch": args.batch, "images": args.images,
              "epochs": args.epochs, "steps": len(theirs_losses), "path": args.path, "raw_init": args.raw_init,
              "dither": args.dither, "contiguous": args.contiguous, "first_gradients": gradients,
              "torch": torch.__version__, "jax": jax.__version__, "keras": keras.__version__,
              "airbench_seconds": recorder.seconds, "ours_seconds": ours["seconds"], "whitening": whitening,
              "compared": compared, "losses": {"airbench": theirs_losses, "ours": ours["losses"],
                                                "nudged": control["losses"]},
              "test_accuracy": accuracy, "test_logit_max_diff": logit_diff}
    (Path(args.out) / "airbench_reference.json").write_text(json.dumps(result, indent=2))
    print(report(result))


def report(r: dict) -> str:
    lines = [f"date {r['date']}; airbench 0.1.8 (torch {r['torch']}) vs ours ({r['path']}, JAX {r['jax']}, "
             f"Keras {r['keras']}); CPU float32; widths {r['widths']}, batch {r['batch']}, {r['images']} images, "
             f"{r['epochs']} epochs = {r['steps']} steps" + ("; --raw-init" if r["raw_init"] else "")
             + ("; --dither" if r["dither"] else "") + ("; --contiguous" if r["contiguous"] else ""),
             f"airbench {r['airbench_seconds']:.0f} s, ours {r['ours_seconds']:.0f} s (shared 2-core CPU)", "",
             "step | airbench loss | our loss | difference | ours nudged 1 ulp: difference to ours",
             "--- | --- | --- | --- | ---"]
    losses = r["losses"]
    for k, (a, b, c) in enumerate(zip(losses["airbench"], losses["ours"], losses["nudged"]), 1):
        lines.append(f"{k} | {a:.7f} | {b:.7f} | {abs(a - b):.1e} | {abs(c - b):.1e}")
    lines += ["", "first step's float32 gradients | biases (where) | kernels (where)", "--- | --- | ---"]
    for who, title in (("airbench", "airbench's vs its float64"), ("ours", "ours vs airbench's float64"),
                       ("ours_vs_airbench", "ours vs airbench's float32")):
        g = r["first_gradients"][who]
        lines.append(f"{title} | {g['biases']['max']:.1e} ({g['biases']['where']}) "
                     f"| {g['kernels']['max']:.1e} ({g['kernels']['where']})")
    w = r["whitening"]
    lines += ["", f"whitening from the same 5,000 images: filters differ by {w['filters']:.1e} of the largest "
                  f"value ({w['sign_flips']} of 12 eigenvectors with the other sign, aligned), the whitening "
                  f"operator (moment + eps I)^-1 by {w['operator']:.1e}; against it in float64: ours "
                  f"{w['ours_vs_float64']:.1e}, airbench's {w['airbench_vs_float64']:.1e}", "",
              "after step | weights vs airbench (where) | batch-norm statistics vs airbench (where) "
              "| weights vs ours nudged 1 ulp | statistics vs ours nudged", "--- | --- | --- | --- | ---"]
    for step, c in r["compared"].items():
        a, n = c["airbench"], c["nudged"]
        lines.append(f"{step} | {a['weights']['max']:.1e} ({a['weights']['where']}) "
                     f"| {a['statistics']['max']:.1e} ({a['statistics']['where']}) "
                     f"| {n['weights']['max']:.1e} | {n['statistics']['max']:.1e}")
    acc, d = r["test_accuracy"], r["test_logit_max_diff"]
    lines += ["", "test accuracy, plain / TTA: " + ", ".join(f"{who} {acc[who]['plain']:.4f} / {acc[who]['tta']:.4f}"
                                                          for who in ("airbench", "ours", "nudged"))
              + f"; largest logit difference to airbench {d['plain']:.1e} / {d['tta']:.1e}",
              "(max rel. difference: largest |a - b| over a tensor / largest |b|; worst tensor named by "
              "airbench's state_dict key)"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
