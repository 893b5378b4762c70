"""The fast trial: airbench's recipe in the VGG family (search/training/airbench/,
search/models/layers.py), from airbench94's own values and pieces to a sweep under JAX.

Where a test pins airbench94, it states airbench's literal value and where it comes from:
the PyPI sdist `airbench` 0.1.8, file and name (airbench/lib_airbench94.py `hyp`,
`make_net94`, `Conv`, `BatchNorm`; airbench/utils.py `train`, `CifarLoader`,
`get_whitening_parameters`, `init_whitening_conv`). bench/airbench_reference.py runs that
sdist itself against our trainer, step by step.
"""

from __future__ import annotations

import functools
import json
import math
import sys

import numpy as np
import pytest

from search.config import AirbenchRecipe, DataConfig, RunConfig, TrainConfig, check_sweep, load_spec
from search.data import load_cifar10, prepare
from search.errors import UsageError
from search.models import vgg
from search.models.layers import PatchWhitening, patch_covariance, whitening_kernel
from search.training import train_and_evaluate
from search.training.airbench import epochs as airbench_epochs
from search.training.airbench import keras_path, recipe
from search.training.results import TrialState
from tests.conftest import REPO, cli_env, run_cli
from tests.sweeps import kept_keras, sweep_runs

VGG_FAST = REPO / "spaces" / "vgg_fast.yaml"


def patches_of(images, k=2):
    """Every k x k patch, flattened in a Keras kernel's (row, column, channel) order."""
    windows = np.lib.stride_tricks.sliding_window_view(images, (k, k), axis=(1, 2))
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, k * k * images.shape[-1])


def correlated_images(n=60, seed=0):
    """Images whose neighbouring pixels and channels are strongly correlated (as in photos)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16, 16, 3))
    x = x + np.roll(x, 1, axis=1) + 0.5 * np.roll(x, 1, axis=2)
    x[..., 1] += 0.8 * x[..., 0]
    return x.astype(np.float32)


def airbench_vgg(**changes) -> vgg.Config:
    options = dict(blocks=3, block="conv-pool-bn-act-conv-bn-act", filters=(8, 16, 16), stem="whiten",
                   conv_bias=False, bn_momentum=0.6, bn_epsilon=1e-12, bn_scale=False, init="airbench",
                   head="gmp", classifier_bias=False, logit_scale=1 / 9, activation="gelu")
    options.update(changes)
    return vgg.Config(**options)


def airbench_triangle(steps, start=0.2, end=0.07, peak=0.23):
    """airbench/utils.py `train`'s `triangle` (its learning-rate multiplier per step,
    0..steps), line for line in numpy instead of torch."""
    xp = np.array([0, int(peak * steps), steps])
    fp = np.array([start, 1, end])
    x = np.arange(1 + steps)
    m = (fp[1:] - fp[:-1]) / (xp[1:] - xp[:-1])
    b = fp[:-1] - (m * xp[:-1])
    indices = np.sum(x[:, None] >= xp[None, :], 1) - 1
    indices = np.clip(indices, 0, len(m) - 1)
    return m[indices] * x + b[indices]


# --------------------------------------------------------------------------- airbench94's values

# airbench/lib_airbench94.py, hyp['opt']: lr 11.5 and weight_decay 0.0153 "per 1024
# examples", momentum 0.85, batch_size 1024, bias_scaler 64. airbench/utils.py `train`
# turns them into PyTorch SGD settings on the summed loss: kilostep_scale = 1024 * (1 + 1 /
# (1 - momentum)); lr = learning_rate / kilostep_scale; wd = weight_decay * batch_size /
# kilostep_scale; lr_biases = lr * bias_scaler; groups weight_decay=wd/lr_biases (norm
# biases) and wd/lr (the rest). Ours are per mean loss: a step on the summed loss of B
# images is B times our step, a decay on the summed gradient B times ours.
B = 1024
KILOSTEP = 1024 * (1 + 1 / (1 - 0.85))
LR_TORCH = 11.5 / KILOSTEP
WD_TORCH = 0.0153 * B / KILOSTEP

AIRBENCH94 = [  # (our setting, airbench94's value in our units, where airbench says it)
    ("train.epochs", 9.9, "lib_airbench94.py hyp['opt']['train_epochs']"),
    ("train.airbench.batch_size", 1024, "lib_airbench94.py hyp['opt']['batch_size']"),
    ("train.airbench.learning_rate", LR_TORCH * B, "lib_airbench94.py hyp['opt']['lr'] = 11.5; utils.py train: "
                                                  "lr = learning_rate / kilostep_scale"),
    ("train.airbench.momentum", 0.85, "lib_airbench94.py hyp['opt']['momentum']"),
    ("train.airbench.nesterov", True, "utils.py train: torch.optim.SGD(..., nesterov=True)"),
    ("train.airbench.weight_decay", WD_TORCH / LR_TORCH / B, "lib_airbench94.py hyp['opt']['weight_decay'] = "
                                                            "0.0153; utils.py train: weight_decay=wd/lr"),
    ("train.airbench.bias_lr_scale", 64.0, "lib_airbench94.py hyp['opt']['bias_scaler']"),
    ("train.airbench.bias_weight_decay", WD_TORCH / (LR_TORCH * 64) / B, "utils.py train: weight_decay=wd/lr_biases"),
    ("train.airbench.label_smoothing", 0.2, "lib_airbench94.py hyp['opt']['label_smoothing']"),
    ("train.airbench.whiten_bias_epochs", 3, "lib_airbench94.py hyp['opt']['whiten_bias_epochs']"),
    ("train.airbench.schedule.kind", "onecycle", "utils.py train: triangle(total_train_steps, ...)"),
    ("train.airbench.schedule.start_fraction", 0.2, "utils.py train: triangle(..., start=0.2)"),
    ("train.airbench.schedule.peak_fraction", 0.23, "utils.py train: triangle(..., peak=0.23)"),
    ("train.airbench.schedule.final_fraction", 0.07, "utils.py train: triangle(..., end=0.07)"),
    ("train.airbench.lookahead", True, "utils.py train: LookaheadState(model)"),
    ("train.airbench.lookahead_every", 5, "utils.py train: if current_steps % 5 == 0"),
    ("train.airbench.lookahead_decay", 0.95, "utils.py train: alpha_schedule = 0.95**5 * (...)**3"),
    ("train.airbench.lookahead_power", 3.0, "utils.py train: alpha_schedule = 0.95**5 * (...)**3"),
    ("train.airbench.flip", "alternating", "lib_airbench94.py train94: CifarLoader(..., altflip=True)"),
    ("train.airbench.tta_level", 2, "lib_airbench94.py hyp['net']['tta_level']"),
    ("data.augment.flip", True, "lib_airbench94.py hyp['aug']['flip']"),
    ("data.augment.translate", 2, "lib_airbench94.py hyp['aug']['translate']"),
    ("model.filters", (64, 256, 256), "lib_airbench94.py hyp['net']['widths']"),
    ("model.block", "conv-pool-bn-act-conv-bn-act", "lib_airbench94.py ConvGroup.forward"),
    ("model.conv_bias", False, "lib_airbench94.py Conv(..., bias=False)"),
    # BatchNorm(num_features, momentum=0.6) passes momentum=1-0.6 to nn.BatchNorm2d, whose
    # running mean is (1 - 0.4) * running + 0.4 * batch: Keras's momentum 0.6.
    ("model.bn_momentum", 0.6, "lib_airbench94.py hyp['net']['batchnorm_momentum'] and BatchNorm.__init__"),
    ("model.bn_epsilon", 1e-12, "lib_airbench94.py BatchNorm(..., eps=1e-12)"),
    ("model.bn_scale", False, "lib_airbench94.py BatchNorm(..., weight=False)"),
    ("model.activation", "gelu", "lib_airbench94.py nn.GELU()"),
    ("model.head", "gmp", "lib_airbench94.py make_net94: nn.MaxPool2d(3) over the 3x3 map"),
    ("model.classifier_bias", False, "lib_airbench94.py make_net94: nn.Linear(..., 10, bias=False)"),
    ("model.logit_scale", 1 / 9, "lib_airbench94.py hyp['net']['scaling_factor']"),
    ("model.stem", "whiten", "lib_airbench94.py make_net94: Conv(3, whiten_width, ...) set by init_whitening_conv"),
    ("model.whiten_kernel", 2, "lib_airbench94.py make_net94: whiten_kernel_size = 2"),
    ("model.whiten_eps", 5e-4, "utils.py init_whitening_conv(layer, train_set, eps=5e-4)"),
    ("model.whiten_images", 5000, "utils.py train: train_loader.images[:5000]"),
    ("model.init", "airbench", "lib_airbench94.py Conv.reset_parameters: dirac_"),
]


def setting(config, path: str):
    return functools.reduce(getattr, path.split("."), config)


@pytest.mark.parametrize("path, value, source", AIRBENCH94, ids=[p for p, _, _ in AIRBENCH94])
def test_vgg_fast_is_airbench94(path, value, source):
    """spaces/vgg_fast.yaml, and the recipe record's defaults, hold airbench94's values."""
    ours = setting(load_spec(VGG_FAST).base_config(), path)
    assert ours == pytest.approx(value, rel=1e-12), f"airbench94 says {value!r} ({source})"
    if path.startswith("train.airbench."):
        default = setting(AirbenchRecipe(), path.removeprefix("train.airbench."))
        assert default == pytest.approx(value, rel=1e-12), f"the record's default; airbench94: {source}"


def test_step_arithmetic_is_airbench94s():
    """airbench/utils.py: CifarLoader.__len__ = len(images) // batch_size (drop_last) and
    train: total_train_steps = ceil(len(train_loader) * epochs), the loop breaking there:
    50,000 images at 1024 for 9.9 epochs are 48 steps an epoch and 476 in all."""
    class AllOfCifar:  # only the training split's size matters here
        x_train = np.empty((50_000, 0))

    config = load_spec(VGG_FAST).base_config()
    assert recipe.shape_of(config, AllOfCifar) == (1024, 48, 476)
    assert airbench_epochs.epoch_steps(48, 476) == [48] * 9 + [44]


def test_learning_rate_follows_airbench94s_triangle():
    """Every step of the 476: our onecycle multiplier is airbench's `triangle`, its peak at
    step int(0.23 * 476) = 109."""
    from search.training.schedules import multiplier

    r = AirbenchRecipe()
    rate = multiplier(r.schedule, 1.0, 48, 476)
    ours = np.array([float(np.asarray(rate(step))) for step in range(477)])
    np.testing.assert_allclose(ours, airbench_triangle(476), rtol=1e-6, atol=1e-7)
    assert ours.argmax() == 109


def test_lookahead_decays_are_airbench94s_alpha_schedule():
    """utils.py train: alpha_schedule = 0.95**5 * (torch.arange(total_train_steps+1) / total_train_steps)**3."""
    decays = recipe.lookahead_decays(476, AirbenchRecipe())
    np.testing.assert_allclose(decays, 0.95 ** 5 * (np.arange(477) / 476) ** 3, rtol=1e-6)
    assert decays.dtype == np.float32


def test_benchmark_data_is_every_training_image(tiny_cifar):
    """airbench94 trains on the whole training set (train94: CifarLoader('cifar10',
    train=True), 50,000 images) and reports the test set: data.val_size 0."""
    dataset = load_cifar10(tiny_cifar)
    splits = prepare(dataset, DataConfig(val_size=0))
    assert len(splits.x_train) == len(dataset.x_train) == 1000 and len(splits.x_val) == 0
    assert sorted(splits.y_train.tolist()) == sorted(dataset.y_train.tolist())
    assert len(splits.x_test) == len(dataset.x_test)


# --------------------------------------------------------------------------- the network


def test_whitening_filters_whiten_the_patches():
    x = correlated_images()
    eps = 5e-4
    kernel = whitening_kernel(x, 2, eps)
    assert kernel.shape == (2, 2, 3, 24)
    patches = patches_of(x).astype(np.float64)
    out = patches @ kernel.reshape(12, 24)
    np.testing.assert_allclose(out[:, 12:], -out[:, :12], atol=1e-5)  # the negatives
    moment = patches.T @ patches / len(patches)
    lam = np.sort(np.linalg.eigvalsh(moment))[::-1]
    whitened = out[:, :12].T @ out[:, :12] / len(out)
    # diag(lambda / (lambda + eps)): the identity wherever the energy is well above eps
    np.testing.assert_allclose(whitened, np.diag(lam / (lam + eps)), atol=2e-3)
    assert np.abs(whitened - np.eye(12)).max() < 0.02
    assert np.abs(moment - np.eye(12)).max() > 0.5  # the input was far from white


def test_patch_moment_is_airbench94s_uncentred_one():
    """utils.py get_whitening_parameters: est_patch_covariance = (patches_flat.T @
    patches_flat) / n, with no mean taken off."""
    x = correlated_images() + 0.5  # patches whose mean is far from zero
    patches = patches_of(x).astype(np.float64)
    np.testing.assert_allclose(patch_covariance(x, 2), patches.T @ patches / len(patches), rtol=1e-5)
    centred = np.cov(patches.T, bias=True)
    assert np.abs(patch_covariance(x, 2) - centred).max() > 0.2


def test_whitening_filters_are_airbench94s():
    """airbench's own whitening init (utils.py get_patches, get_whitening_parameters,
    init_whitening_conv, copied below as written, in torch) and ours give the same filters
    from the same images, up to each eigenvector's sign (arbitrary in any eigensolver)."""
    torch = pytest.importorskip("torch")

    def get_patches(x, patch_shape):
        c, (h, w) = x.shape[1], patch_shape
        return x.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w).float()

    def get_whitening_parameters(patches):
        n, c, h, w = patches.shape
        patches_flat = patches.view(n, -1)
        est_patch_covariance = (patches_flat.T @ patches_flat) / n
        eigenvalues, eigenvectors = torch.linalg.eigh(est_patch_covariance, UPLO='U')
        return eigenvalues.flip(0).view(-1, 1, 1, 1), eigenvectors.T.reshape(c * h * w, c, h, w).flip(0)

    def init_whitening_conv(weight, train_set, eps=5e-4):
        patches = get_patches(train_set, patch_shape=weight.shape[2:])
        eigenvalues, eigenvectors = get_whitening_parameters(patches)
        eigenvectors_scaled = eigenvectors / torch.sqrt(eigenvalues + eps)
        weight[:] = torch.cat((eigenvectors_scaled, -eigenvectors_scaled))

    x = correlated_images(200) + 0.3  # a mean, as normalised photos have locally: centring would matter
    theirs = torch.zeros(24, 3, 2, 2)
    init_whitening_conv(theirs, torch.from_numpy(x).permute(0, 3, 1, 2))
    theirs = theirs.numpy().transpose(2, 3, 1, 0)  # OIHW -> a Keras kernel's HWIO
    ours = whitening_kernel(x, 2, 5e-4)
    signs = np.sign(np.sum(ours * theirs, axis=(0, 1, 2)))
    np.testing.assert_allclose(ours * signs, theirs, rtol=1e-3, atol=1e-4 * np.abs(theirs).max())


def test_whitening_bias_starts_at_zero():
    """lib_airbench94.py Conv.reset_parameters: `self.bias.data.zero_()`, the whitening
    convolution's bias included."""
    import keras

    net = vgg.build(airbench_vgg(), (32, 32, 3), 10)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(net.get_layer("stem_whiten").bias), np.zeros(24))


def test_the_heads_max_pool_sends_a_tied_maximum_to_its_first_position():
    """lib_airbench94.py make_net94: nn.MaxPool2d(3) over the last 3x3 map, whose gradient
    goes to the first (row-major) of tied maxima; a reduce-max (GlobalMaxPooling2D) would
    split it among them. Flat image regions make exact ties common: 24 of the 32,768
    image-channels of airbench's first 512-image batch at widths 16/64/64 (measured)."""
    import keras
    import tensorflow as tf  # the test process's backend

    from search.models.blocks import dense_head

    inputs = keras.Input((3, 3, 2))
    model = keras.Model(inputs, dense_head(inputs, "gmp", units=1, dropout=0.0, activation="relu", num_classes=2,
                                           output_activation="linear", use_bias=False, logit_scale=1.0,
                                           classifier_options={"kernel_initializer": "identity"}))
    x = np.zeros((1, 3, 3, 2), np.float32)
    x[0, [0, 1, 2], [2, 1, 0], 0] = 1.0  # three tied maxima in channel 0
    x[0, :, :, 1] = -1.0  # nine in channel 1
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(model(x))
    grad = tape.gradient(total, x).numpy()[0]
    first = np.zeros((3, 3))
    first[0, 2] = 1.0
    np.testing.assert_array_equal(grad[..., 0], first)
    first = np.zeros((3, 3))
    first[0, 0] = 1.0
    np.testing.assert_array_equal(grad[..., 1], first)


def test_whitening_leaves_unused_directions_at_zero():
    x = correlated_images()
    x[..., 2] = x[..., 1]  # a channel that copies another: 4 patch directions carry nothing
    out = patches_of(x) @ whitening_kernel(x, 2, 5e-4).reshape(12, 24)[:, :12]
    energy = np.sort(np.mean(out.astype(np.float64) ** 2, axis=0))
    assert np.all(energy[:4] < 1e-3)  # not blown up by 1/sqrt(eps)
    np.testing.assert_allclose(energy[4:], 1.0, atol=0.02)


def test_whitening_layer_trains_only_its_bias_and_convolves():
    import keras

    layer = PatchWhitening(2, 5e-4)
    x = correlated_images(8)
    y = layer(x)
    assert tuple(y.shape) == (8, 15, 15, 24)
    assert [w.name for w in layer.trainable_weights] == ["bias"]
    assert [w.name for w in layer.non_trainable_weights] == ["kernel"]
    layer.set_statistics(x)
    layer.bias.assign(np.arange(24, dtype=np.float32))
    expected = patches_of(x) @ keras.ops.convert_to_numpy(layer.kernel).reshape(12, 24) + np.arange(24)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)).reshape(-1, 24), expected, rtol=1e-4, atol=1e-4)


def test_airbench_init_is_an_identity_on_the_first_filters():
    import keras

    net = vgg.build(airbench_vgg(filters=(32, 16, 16)), (32, 32, 3), 10)
    for name, c_in, c_out in (("block1_conv1", 24, 32), ("block1_conv2", 32, 32), ("block2_conv1", 32, 16)):
        kernel = keras.ops.convert_to_numpy(net.get_layer(name).kernel)
        n = min(c_in, c_out)
        dirac = np.zeros((3, 3, c_in, n))
        dirac[1, 1, np.arange(n), np.arange(n)] = 1
        np.testing.assert_array_equal(kernel[..., :n], dirac)
        rest = kernel[..., n:]
        bound = 1 / math.sqrt(9 * c_in)  # PyTorch's default init
        if rest.size:
            assert np.abs(rest).max() <= bound and np.abs(rest).max() > 0.5 * bound
    assert net.get_layer("classifier").bias is None and net.get_layer("block1_conv1").bias is None
    assert net.get_layer("block1_bn1").gamma is None  # centre only


# --------------------------------------------------------------------------- the optimisation


def test_lookahead_callback_follows_the_rule_on_a_toy():
    import keras

    r = AirbenchRecipe()
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    w = model.layers[0].kernel
    look = keras_path.Lookahead(r, total_steps=12)
    look.set_model(model)
    look.on_train_begin()
    seen = []
    for step in range(1, 13):
        w.assign(w + 1.0)  # the "optimiser" adds 1 per step
        look.on_train_batch_end(step - 1)
        seen.append(float(keras.ops.convert_to_numpy(w)[0, 0]))
    # by hand: ema starts at 0; syncs at steps 5 and 10 with d = 0.95**5 * (step / 12)**3
    d5, d10 = 0.95**5 * (5 / 12) ** 3, 0.95**5 * (10 / 12) ** 3
    ema5 = (1 - d5) * 5.0
    ema10 = d10 * ema5 + (1 - d10) * (ema5 + 5.0)
    np.testing.assert_allclose(seen[:4], [1, 2, 3, 4])
    np.testing.assert_allclose(seen[4], ema5, rtol=1e-6)  # w <- ema at step 5
    np.testing.assert_allclose(seen[9], ema10, rtol=1e-6)
    np.testing.assert_allclose(seen[11], ema10 + 2, rtol=1e-6)
    look.finish()  # the end: w <- ema
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(w)[0, 0]), ema10, rtol=1e-6)


def test_recipe_sgd_is_pytorchs_nesterov_sgd_with_coupled_decay():
    """Our Keras optimiser against torch.optim.SGD as airbench configures it: two groups
    (batch-norm biases at 64x the lr with their own decay), an lr that changes each step."""
    torch = pytest.importorskip("torch")
    import keras

    r = AirbenchRecipe()
    # Rates small enough that the toy is not chaotic (at 0.9 x 64 a float32 rounding
    # difference grew to 6% in six steps): the comparison is of the rule, not of luck.
    rates = [0.003, 0.005, 0.009, 0.007, 0.002, 0.001]

    class Rates(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return keras.ops.take(keras.ops.convert_to_tensor(rates, "float32"), step)

    start = [np.array([1.0, -2.0, 0.5]), np.array([0.3, 0.1])]
    grads = lambda ws: [2 * ws[0] + 1.0, np.tanh(ws[1]) - 0.2]  # noqa: E731 - a toy gradient
    ours = [keras.Variable(w.astype(np.float32)) for w in start]
    opt = keras_path.RecipeSGD(Rates(), r.momentum, True, {ours[0].path: (1.0, r.weight_decay, None),
                                                           ours[1].path: (r.bias_lr_scale, r.bias_weight_decay,
                                                                          None)})
    theirs = [torch.tensor(w, dtype=torch.float32, requires_grad=True) for w in start]
    ref = torch.optim.SGD([{"params": [theirs[0]], "lr": 1.0, "weight_decay": r.weight_decay},
                           {"params": [theirs[1]], "lr": 1.0, "weight_decay": r.bias_weight_decay}],
                          momentum=r.momentum, nesterov=True)
    for lr in rates:
        g = grads([keras.ops.convert_to_numpy(v) for v in ours])
        opt.apply_gradients(zip([keras.ops.convert_to_tensor(x.astype(np.float32)) for x in g], ours))
        for p, group, scale in zip(theirs, ref.param_groups, (1.0, r.bias_lr_scale)):
            group["lr"] = lr * scale
        for p, x in zip(theirs, grads([p.detach().numpy() for p in theirs])):
            p.grad = torch.tensor(x, dtype=torch.float32)
        ref.step()
    for v, p in zip(ours, theirs):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), p.detach().numpy(), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- data and evaluation


def test_alternating_flip_pattern_inverts_on_odd_epochs():
    pattern = recipe.flip_pattern(1000, seed=3)
    assert 400 < pattern.sum() < 600
    np.testing.assert_array_equal(recipe.epoch_flips(pattern, 0), pattern)
    np.testing.assert_array_equal(recipe.epoch_flips(pattern, 1), ~pattern)
    np.testing.assert_array_equal(recipe.epoch_flips(pattern, 2), pattern)
    np.testing.assert_array_equal(recipe.epoch_flips(pattern, 7), ~pattern)
    # a flip decision is the image mirrored left-right
    x = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
    out = recipe.augment(np, x, np.array([0, 1]), np.zeros((2, 2), int), np.array([True, False]), 4)
    np.testing.assert_array_equal(out[0], x[0, :, ::-1])
    np.testing.assert_array_equal(out[1], x[1])


def test_translation_keeps_shapes_and_pads_by_reflection():
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 6, 6, 2)).astype(np.float32)
    padded = recipe.pad_reflect(np, x, 2)
    np.testing.assert_array_equal(padded, np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect"))
    index = np.array([0, 1, 2])
    offsets = np.array([[2, 2], [0, 0], [4, 1]])  # centred; shifted down-right by 2; up by 2, right by 1
    out = recipe.augment(np, padded, index, offsets, np.zeros(3, bool), 6)
    assert out.shape == x.shape
    np.testing.assert_array_equal(out[0], x[0])
    np.testing.assert_array_equal(out[1, 2:, 2:], x[1, :-2, :-2])
    np.testing.assert_array_equal(out[1, 0], x[1, 2, [2, 1, 0, 1, 2, 3]])  # reflected rows and columns
    np.testing.assert_array_equal(out[2, :-2, 1:], x[2, 2:, :-1])
    # the fused path runs the same function on jax.numpy
    jout = recipe.augment(jnp, jnp.asarray(padded), jnp.asarray(index), jnp.asarray(offsets), jnp.zeros(3, bool), 6)
    np.testing.assert_array_equal(np.asarray(jout), out)


def test_tta_is_the_stated_combination():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="tanh"),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    x = np.random.default_rng(1).normal(size=(5, 8, 8, 3)).astype(np.float32)

    def f(v):
        return keras.ops.convert_to_numpy(model(np.ascontiguousarray(v)))

    def mirror(v):
        return 0.5 * (f(v) + f(v[:, :, ::-1]))

    p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    up_left, down_right = p[:, 2:, 2:], p[:, :-2, :-2]
    assert np.array_equal(up_left[:, :-1, :-1], x[:, 1:, 1:])
    expected = 0.5 * mirror(x) + 0.25 * (mirror(up_left) + mirror(down_right))
    for level, want in ((0, f(x)), (1, mirror(x)), (2, expected)):
        plain, tta = recipe.tta_logits(model, keras.ops.convert_to_tensor(x), level)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(plain), f(x), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(tta), want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(expected, mirror(x), atol=1e-3)  # the shifts matter in this test


# --------------------------------------------------------------------------- configuration


FAST_SET = ["model.filters=[8, 16, 16]", "data.train_size=200", "data.val_size=100", "data.test_size=100",
            "train.epochs=1.5", "train.airbench.batch_size=50", "train.airbench.eval_batch_size=100",
            "model.width_multiplier=1.0", "model.block=conv-pool-bn-act-conv-bn-act", "train.loss_window=2"]


def fast_set(**changes) -> list[str]:
    """FAST_SET as --set flags, with `changes` ({key: value}) replacing or adding items."""
    items = dict(item.split("=", 1) for item in FAST_SET)
    items.update(changes)
    return [flag for key, value in items.items() for flag in ("--set", f"{key}={value}")]


@pytest.mark.parametrize("overrides, words", [
    ({"train.recipe": "standard"}, "train.epochs 9.9: a fraction of an epoch needs train.recipe: airbench"),
    ({"train.recipe": "standard", "train.epochs": 10}, "val_tta_accuracy needs train.recipe: airbench"),
    ({"train.learning_rate": 0.1}, "train.learning_rate is not used by train.recipe airbench "
                                   "(see train.airbench.learning_rate)"),
    ({"model.logit_scale": None}, "needs a vgg model with model.logit_scale"),
    ({"data.val_size": 5}, "val_size is 0 (no validation split) or at least 10 images"),
])
def test_recipe_misconfigurations_are_one_line_errors(overrides, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_spec(VGG_FAST, overrides)


@pytest.mark.parametrize("overrides, words", [
    ({"train.epochs": 2.5}, "train.epochs 2.5: a fraction of an epoch needs train.recipe: airbench"),
    ({"data.val_size": 0}, "data.val_size 0 (no validation split) needs train.recipe: airbench"),
])
def test_the_standard_trainer_refuses_what_only_the_recipe_does(overrides, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_spec(REPO / "spaces" / "vgg_blocks.yaml", overrides)
    assert load_spec(REPO / "spaces" / "vgg_blocks.yaml", {"train.epochs": 3.0}).file.train.epochs == 3


def test_a_sweep_never_selects_on_the_test_set(tmp_path):
    """data.val_size 0 is for `blocksweep train`: a sweep refuses it, set or searched."""
    check_sweep(load_spec(VGG_FAST))
    with pytest.raises(UsageError, match="data.val_size 0 .* cannot be swept"):
        check_sweep(load_spec(VGG_FAST, {"data.val_size": 0}))
    searched = tmp_path / "searched.yaml"
    searched.write_text(VGG_FAST.read_text() + "  data.val_size: {type: categorical, choices: [0, 5000]}\n")
    with pytest.raises(UsageError, match="params.data.val_size: data.val_size 0"):
        check_sweep(load_spec(searched))


@pytest.mark.parametrize("launcher", [[], ["--workers", "1"]], ids=["run", "run --workers"])
def test_run_refuses_the_benchmark_mode_and_creates_nothing(cli, capsys, workdir, tiny_cifar, tracking_uri, launcher):
    from mlflow.tracking import MlflowClient

    before = sorted(p.name for p in (workdir / "mlruns").iterdir())
    code = cli("run", VGG_FAST, "--data-dir", tiny_cifar, "--quiet", *launcher, *fast_set(**{"data.val_size": 0}))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "data.val_size 0" in err and "never sees the test set" in err
    assert sorted(p.name for p in (workdir / "mlruns").iterdir()) == before
    assert MlflowClient(tracking_uri).get_experiment_by_name("vgg_fast") is None


def test_train_runs_the_benchmark_mode(cli, capsys, workdir, tiny_cifar, tracking_uri):
    """`blocksweep train spaces/vgg_fast.yaml --set data.val_size=0`: every training image
    trains, no epoch is validated, the test set is reported with TTA."""
    from mlflow.tracking import MlflowClient

    assert cli("train", VGG_FAST, "--data-dir", tiny_cifar, "--quiet", *fast_set(**{"data.val_size": 0})) == 0
    line = capsys.readouterr().out.strip()
    assert "completed: no validation split, test_tta_accuracy" in line
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("vgg_fast-train").experiment_id])
    assert run.data.params["data.size.train"] == "200" and run.data.params["data.size.val"] == "0"
    assert 0 <= run.data.metrics["test_tta_accuracy"] <= 1 and "objective" not in run.data.metrics
    assert not [k for k in run.data.metrics if k.startswith("val_")]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]  # 1.5 epochs


# --------------------------------------------------------------------------- the paths


@pytest.fixture(scope="module")
def tiny_splits(tiny_cifar):
    return prepare(load_cifar10(tiny_cifar), DataConfig(train_size=200, val_size=100, test_size=100))


def tiny_recipe(epochs=2, val_size=100, **airbench) -> RunConfig:
    return RunConfig(model=airbench_vgg(), data=DataConfig(train_size=200, val_size=val_size, test_size=100),
                     train=TrainConfig(recipe="airbench", epochs=epochs, loss_window=2,
                                       airbench=AirbenchRecipe(batch_size=50, eval_batch_size=100, **airbench)),
                     objective={"metric": "val_tta_accuracy"})


def test_generic_path_runs_the_recipe_under_tensorflow(tiny_splits, tmp_path):
    """2.5 epochs of 4 steps: ceil(10) = 10 steps, the third epoch 2 of them; the schedule
    runs over the 10 (airbench's arithmetic)."""
    import keras

    from search.models import load_model

    seen = []
    result = train_and_evaluate(tiny_recipe(epochs=2.5), tiny_splits, on_epoch=lambda e, m, p: seen.append((e, m, p)))
    assert result.state is TrialState.COMPLETE, result.reason
    assert [e for e, _, _ in seen] == [1, 2, 3] and result.epochs_run == 3
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "val_tta_accuracy", "learning_rate",
            "images_per_second", "compile_seconds"} <= set(seen[0][1])
    assert [step for _, _, points in seen for step, _ in points] == [2, 4, 6, 8, 10]
    rates = [m["learning_rate"] for _, m, _ in seen]  # at each epoch's last step: 3, 7 and 9 of 10
    np.testing.assert_allclose(rates, 1.5 * airbench_triangle(10)[[3, 7, 9]], rtol=1e-6)
    assert result.objective == seen[-1][1]["val_tta_accuracy"] and result.best_epoch == 3
    assert 0 <= result.test["test_tta_accuracy"] <= 1 and "test_accuracy" in result.test
    probs = keras.ops.convert_to_numpy(result.model(tiny_splits.x_test[:4]))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    whiten = keras.ops.convert_to_numpy(result.model.get_layer("stem_whiten").kernel)
    assert np.abs(whiten).max() > 0  # the trainer set the filters from the data
    result.model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")  # safe_mode=True, custom layer registered
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(tiny_splits.x_test[:4])), probs, rtol=1e-5, atol=1e-6)


def test_generic_path_prunes_through_report(tiny_splits):
    asked = []
    result = train_and_evaluate(tiny_recipe(epochs=3), tiny_splits,
                                report=lambda epoch, value: asked.append((epoch, value)) or True)
    assert result.state is TrialState.PRUNED and result.epochs_run == 1
    assert asked == [(1, result.history[0]["val_tta_accuracy"])]


def test_without_a_validation_split_only_the_test_set_is_scored(tiny_cifar):
    splits = prepare(load_cifar10(tiny_cifar), DataConfig(train_size=200, val_size=0, test_size=100))
    asked = []
    result = train_and_evaluate(tiny_recipe(val_size=0), splits, report=lambda e, v: asked.append(e) or False)
    assert result.state is TrialState.COMPLETE and result.epochs_run == 2
    assert result.objective is None and result.best_epoch is None and asked == []
    assert not [k for h in result.history for k in h if k.startswith("val_")]
    assert 0 <= result.test["test_tta_accuracy"] <= 1


def test_whitening_bias_freezes_after_three_epochs_on_the_keras_path(tiny_splits):
    """lib_airbench94.py hyp['opt']['whiten_bias_epochs'] = 3; utils.py train:
    `model[0].bias.requires_grad = (epoch < whiten_bias_epochs)`. Lookahead off, so only
    the optimiser moves the weights: the bias moves in every step of epochs 1-3 and in no
    step after, while the other weights go on training. (Under JAX both paths:
    test_the_fused_and_keras_paths_train_alike.)"""
    import keras

    from search.training.components import trial_setup

    config = tiny_recipe(epochs=4, lookahead=False)
    with trial_setup(config):
        trainer = keras_path.KerasTrainer(config, tiny_splits)
        layers = [trainer.net.get_layer(name) for name in ("stem_whiten", "block1_conv1")]

        def weights():
            return [keras.ops.convert_to_numpy(layer.trainable_weights[0]).copy() for layer in layers]

        seen = [weights()]
        for epoch in range(4):
            x, y = trainer.epoch_data(epoch)
            for step in range(trainer.steps_per_epoch):
                trainer.train_steps(x, y, step, 1)
                seen.append(weights())
    moved = [[not np.array_equal(a[k], b[k]) for a, b in zip(seen, seen[1:])] for k in range(2)]
    assert moved[0] == [True] * 12 + [False] * 4  # the whitening bias: 3 epochs of 4 steps
    assert moved[1] == [True] * 16


def test_the_fused_and_keras_paths_train_alike(tiny_cifar, tmp_path):
    """The same recipe through the fused JAX trainer and through Keras fit, from the same
    initial weights on the same batches, step by step (tests/airbench_paths.py, under JAX
    in a fresh process): 15 steps of 3.6 epochs, with lookahead syncs at steps 5, 10 and
    15, the whitening bias frozen after step 12, and the final lookahead."""
    import subprocess

    out = tmp_path / "paths.json"
    done = subprocess.run([sys.executable, "-m", "tests.airbench_paths", str(tiny_cifar), str(out)], cwd=REPO,
                          env=cli_env(KERAS_BACKEND="jax"), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(out.read_text())
    assert (run["steps_per_epoch"], run["total_steps"]) == (4, 15)
    record = run["record"]
    assert [r["step"] for r in record] == [*range(16), "final"]
    assert all(w["diff"] == 0 for w in record[0]["weights"].values())  # the same start
    for r in record:  # weight by weight, within float32 tolerance of each weight's scale
        for name, w in r["weights"].items():
            assert w["diff"] <= 1e-5 * w["scale"] + 1e-7, (r["step"], name, w)
        if r["loss_fused"] is not None:
            assert r["loss_fused"] == pytest.approx(r["loss_keras"], rel=1e-5)
    for path in ("bias_fused", "bias_keras"):
        bias = [np.array(r[path]) for r in record[:16]]
        moved = [not np.array_equal(a, b) for a, b in zip(bias, bias[1:])]
        # steps 1-12 train it; 13 and 14 do not; 15 is a lookahead sync (it moves every weight)
        assert moved == [True] * 12 + [False, False, True], path
    assert np.array_equal(record[-1]["bias_fused"], record[-2]["bias_fused"])  # the sync at 15 = the EMA


def test_fused_path_under_jax_runs_a_sweep_and_its_model_loads_under_tensorflow(workdir, tiny_cifar,
                                                                                tracking_uri):
    """JAX compiles take ~20 s on a CPU, so one test: `blocksweep run spaces/vgg_fast.yaml`
    under JAX, shrunk with --set, with 2 steps per dispatch (the fused loop, as on a GPU),
    gives a completed child run with per-epoch TTA accuracy and a kept model, which loads
    with safe_mode=True under TensorFlow; `blocksweep train` of the same space runs
    the CPU's default of one step per dispatch."""
    args = ["run", REPO / "spaces" / "vgg_fast.yaml", "--backend", "jax", "--data-dir", tiny_cifar,
            "--trials", "1", "--study", "fast", "--quiet", "--json", "--set", "train.airbench.steps_per_dispatch=2"]
    for item in FAST_SET:
        args += ["--set", item]
    done = run_cli(args, cwd=workdir, timeout=400, KERAS_BACKEND="jax")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["ran"] == {"completed": 1, "pruned": 0, "failed": 0}
    client, parents, children = sweep_runs(tracking_uri, "fast")
    (child,) = children
    assert child.data.tags["blocksweep.state"] == "completed" and child.data.tags["blocksweep.backend"] == "jax"
    history = client.get_metric_history(child.info.run_id, "val_tta_accuracy")
    assert sorted(m.step for m in history) == [1, 2]
    metrics = child.data.metrics
    assert metrics["objective"] == [m.value for m in history if m.step == 2][0]
    assert 0 <= metrics["test_tta_accuracy"] <= 1 and metrics["compile_seconds"] > 0
    assert any((workdir / "mlruns" / "xla_cache").iterdir())  # the persistent compilation cache
    assert child.data.tags.get("blocksweep.model") == "kept"
    # Trained under JAX, loaded here under TensorFlow (the test process's backend), as a
    # model trained on a GPU worker is used on a CPU: safe_mode=True, the custom layer
    # registered by importing search.models.layers.
    import keras

    from search.models.classifier import network, tta_level

    model = keras.models.load_model(kept_keras(client, child.info.run_id, workdir), safe_mode=True)
    assert np.abs(keras.ops.convert_to_numpy(network(model).get_layer("stem_whiten").kernel)).max() > 0
    assert tta_level(model) == 2  # the sweep ranks by val_tta_accuracy: the model answers with TTA
    x = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3)).astype("float32")  # raw pixels
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)).sum(axis=1), 1.0, rtol=1e-5)

    single = ["train", REPO / "spaces" / "vgg_fast.yaml", "--backend", "jax", "--data-dir", tiny_cifar,
              "--quiet", "--json"]
    for item in FAST_SET:
        single += ["--set", item]
    done = run_cli(single, cwd=workdir, timeout=400, KERAS_BACKEND="jax")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["state"] == "completed" and summary["metric"] == "val_tta_accuracy"
    assert 0 <= summary["objective"] <= 1 and 0 <= summary["test_tta_accuracy"] <= 1


def test_crops_in_the_graph_are_the_numpy_augmentation():
    """tensorflow_path.crops (unpadded images, cut inside the step) gives recipe.augment's
    crops (from padded images, on the host) for the same indices, offsets and flips."""
    import tensorflow as tf

    from search.training.airbench.tensorflow_path import crops

    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 6, 6, 3)).astype(np.float32)
    index = np.array([4, 0, 2, 2, 1])
    offsets = rng.integers(0, 5, size=(5, 2))
    flips = np.array([True, False, True, False, True])
    want = recipe.augment(np, recipe.pad_reflect(np, x, 2), index, offsets, flips, 6)
    got = crops(tf.constant(x), tf.constant(index, tf.int32), tf.constant(offsets, tf.int32), tf.constant(flips), 2)
    np.testing.assert_array_equal(got.numpy(), want)
    assert not np.array_equal(want[0], x[4])  # shifted and flipped: the test can fail


def test_the_compiled_tensorflow_step_trains_as_keras_fit(tiny_splits):
    """The TensorFlow trainer (one tf.function per step, crops cut in the graph, lookahead
    in the graph) against the Keras fit path, from the same weights on the same batches:
    2.6 epochs of 4 steps = 11 steps, the lookahead syncing at steps 5 and 10, the
    whitening bias frozen after step 8, then the final lookahead. The learning rate is a
    third of the recipe's, as in tests/airbench_paths.py (at 1.5 so small a trial is
    chaotic and float32 rounding alone carries two runs apart)."""
    import keras

    from search import models
    from search.training.airbench.tensorflow_path import TensorFlowTrainer
    from search.training.components import build_model, trial_setup

    config = tiny_recipe(epochs=2.6, learning_rate=0.5, whiten_bias_epochs=2)
    with trial_setup(config):
        net = build_model(config, tiny_splits)
        twin = models.build_model(config.model, tiny_splits.input_shape, tiny_splits.num_classes)
        twin.set_weights(net.get_weights())
        compiled = TensorFlowTrainer(config, tiny_splits, net=net)
        plain = keras_path.KerasTrainer(config, tiny_splits, net=twin)
        assert compiled.total_steps == 11
        for epoch, count in enumerate(airbench_epochs.epoch_steps(4, 11)):
            losses_c, right_c = compiled.read_train(compiled.train_steps(*compiled.epoch_data(epoch), 0, count))
            losses_k, right_k = plain.read_train(plain.train_steps(*plain.epoch_data(epoch), 0, count))
            np.testing.assert_allclose(losses_c, losses_k, rtol=1e-5)
            assert right_c == pytest.approx(right_k)
        compiled.finish_lookahead()
        plain.finish_lookahead()
        for a, b, w in zip(compiled.export().weights, plain.export().weights, net.weights):
            a, b = keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
            assert np.max(np.abs(a - b), initial=0) <= 1e-5 * np.max(np.abs(b), initial=0) + 1e-7, w.path
        for split in ("val", "test"):
            ours, theirs = compiled.read_eval(compiled.evaluate(split)), plain.read_eval(plain.evaluate(split))
            assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6)
