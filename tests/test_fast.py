"""The fast trial: airbench's recipe in the VGG family (search/training/airbench/,
search/models/layers.py), from its pieces to a sweep under JAX."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from search.config import AirbenchRecipe, DataConfig, RunConfig, TrainConfig, load_spec
from search.data import load_cifar10, prepare
from search.errors import UsageError
from search.models import vgg
from search.models.layers import PatchWhitening, whitening_kernel
from search.training import train_and_evaluate
from search.training.airbench import keras_path, recipe
from search.training.results import TrialState
from tests.conftest import REPO, run_cli
from tests.sweeps import kept_keras, sweep_runs


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
                   conv_bias=False, bn_momentum=0.4, bn_epsilon=1e-12, bn_scale=False, init="airbench",
                   head="gmp", classifier_bias=False, logit_scale=1 / 9, activation="gelu")
    options.update(changes)
    return vgg.Config(**options)


# --------------------------------------------------------------------------- the network


def test_whitening_filters_whiten_the_patches():
    x = correlated_images()
    eps = 5e-4
    kernel = whitening_kernel(x, 2, eps)
    assert kernel.shape == (2, 2, 3, 24)
    patches = patches_of(x)
    out = patches @ kernel.reshape(12, 24)
    np.testing.assert_allclose(out[:, 12:], -out[:, :12], atol=1e-5)  # the negatives
    lam = np.sort(np.linalg.eigvalsh(np.cov(patches.T)))[::-1]
    whitened = np.cov(out[:, :12].T)
    # diag(lambda / (lambda + eps)): the identity wherever the variance is well above eps
    np.testing.assert_allclose(whitened, np.diag(lam / (lam + eps)), atol=2e-3)
    assert np.abs(whitened - np.eye(12)).max() < 0.02
    assert np.abs(np.cov(patches.T) - np.eye(12)).max() > 0.5  # the input was far from white


def test_whitening_leaves_unused_directions_at_zero():
    x = correlated_images()
    x[..., 2] = x[..., 1]  # a channel that copies another: 4 patch directions carry nothing
    out = patches_of(x) @ whitening_kernel(x, 2, 5e-4).reshape(12, 24)[:, :12]
    variances = np.sort(np.var(out, axis=0))
    assert np.all(variances[:4] < 1e-3)  # not blown up by 1/sqrt(eps)
    np.testing.assert_allclose(variances[4:], 1.0, atol=0.02)


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
    rates = [0.3, 0.5, 0.9, 0.7, 0.2, 0.1]

    class Rates(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return keras.ops.take(keras.ops.convert_to_tensor(rates, "float32"), step)

    start = [np.array([1.0, -2.0, 0.5]), np.array([0.3, 0.1])]
    grads = lambda ws: [2 * ws[0] + 1.0, np.sin(3 * ws[1])]  # noqa: E731 - a toy gradient
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
            "train.epochs=2", "train.airbench.batch_size=50", "train.airbench.eval_batch_size=100",
            "model.width_multiplier=1.0", "model.block=conv-pool-bn-act-conv-bn-act", "train.loss_window=2"]


def test_vgg_fast_defaults_are_airbench94():
    config = load_spec(REPO / "spaces" / "vgg_fast.yaml").base_config()
    assert config.model.widths() == [64, 256, 256] and config.model.stem == "whiten"
    assert config.train.recipe == "airbench" and config.train.airbench == AirbenchRecipe()
    assert config.objective.metric == "val_tta_accuracy"


@pytest.mark.parametrize("overrides, words", [
    ({"train.recipe": "standard"}, "val_tta_accuracy needs train.recipe: airbench"),
    ({"train.learning_rate": 0.1}, "train.learning_rate is not used by train.recipe airbench "
                                   "(see train.airbench.learning_rate)"),
    ({"model.logit_scale": None}, "needs a vgg model with model.logit_scale"),
])
def test_recipe_misconfigurations_are_one_line_errors(overrides, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_spec(REPO / "spaces" / "vgg_fast.yaml", overrides)


# --------------------------------------------------------------------------- the paths


@pytest.fixture(scope="module")
def tiny_splits(tiny_cifar):
    return prepare(load_cifar10(tiny_cifar), DataConfig(train_size=200, val_size=100, test_size=100))


def tiny_recipe(epochs=2, **airbench) -> RunConfig:
    return RunConfig(model=airbench_vgg(), data=DataConfig(train_size=200, val_size=100, test_size=100),
                     train=TrainConfig(recipe="airbench", epochs=epochs, loss_window=2,
                                       airbench=AirbenchRecipe(batch_size=50, eval_batch_size=100, **airbench)),
                     objective={"metric": "val_tta_accuracy"})


def test_generic_path_runs_the_recipe_under_tensorflow(tiny_splits, tmp_path):
    import keras

    from search.models import load_model

    seen = []
    result = train_and_evaluate(tiny_recipe(), tiny_splits, on_epoch=lambda e, m, p: seen.append((e, m, p)))
    assert result.state is TrialState.COMPLETE, result.reason
    assert [e for e, _, _ in seen] == [1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "val_tta_accuracy", "learning_rate",
            "images_per_second", "compile_seconds"} <= set(seen[0][1])
    assert [step for _, _, points in seen for step, _ in points] == [2, 4, 6, 8]  # 4 steps of 50 per epoch
    assert result.objective == seen[-1][1]["val_tta_accuracy"] and result.best_epoch == 2
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
