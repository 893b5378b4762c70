"""Transfer learning with a ResNet base: which layers each scheme trains, the embedding
cache, weights sources that do not fit, and the transfer demo's three arms.

A tiny ResNet (width 1/8, one block per stage, 32x32) keeps each training to seconds; its
"pre-trained" weights are a freshly initialised classifier saved to a file: what matters
here is where weights go, not what they know."""

from __future__ import annotations

import json

import numpy as np
import pytest

from search.config import DataConfig, RunConfig, TrainConfig
from search.data import load_cifar10, prepare
from search.models import resnet50
from tests.sweeps import sweep_runs

TINY = dict(input_size=32, width=0.125, stage_blocks=(1, 1, 1, 1))
DATA = DataConfig(train_size=200, val_size=50, test_size=50, normalize=False, augment={"flip": False, "translate": 0})


def config(**model) -> RunConfig:
    return RunConfig(model=resnet50.Config(**{**TINY, **model}), data=DATA,
                     train=TrainConfig(epochs=1, batch_size=50, optimizer="adam", learning_rate=1e-3))


@pytest.fixture(scope="module")
def splits(tiny_cifar):
    return prepare(load_cifar10(tiny_cifar), DATA)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny ResNet classifier saved as .keras: the 'pre-trained' weights."""
    from search.models import build_model

    path = tmp_path_factory.mktemp("source") / "source.keras"
    build_model(resnet50.Config(**TINY), (32, 32, 3), 10).save(path)
    return path


def base_weights(path):
    import keras

    return keras.models.load_model(path, safe_mode=True).get_layer(resnet50.BASE)


# --------------------------------------------------------------------------- which layers train


@pytest.mark.parametrize("k,unfrozen", [(0, []), (1, ["conv5"]), (2, ["conv4", "conv5"])])
def test_finetuning_unfreezes_exactly_the_top_k_stages_without_batch_norm(k, unfrozen):
    from search.models import build_model

    net = build_model(resnet50.Config(**TINY), (32, 32, 3), 10)
    net.get_layer(resnet50.BASE).trainable = False
    resnet50.unfreeze_top_stages(net.get_layer(resnet50.BASE), k)
    split = resnet50.trainable_split(net)
    # One block per stage: conv1 is a conv and a batch norm; each of conv2..conv5 has four
    # convs (the projection shortcut included) and four batch norms. A conv has a kernel
    # and a bias; a batch norm gamma, beta and its two moving statistics.
    for stage in resnet50.STAGES:
        convs = 1 if stage == "conv1" else 4
        expected = 2 * convs if stage in unfrozen else 0
        assert split[stage]["trainable_weights"] == expected, stage
        assert split[stage]["frozen_weights"] == 4 * convs + (2 * convs - expected), stage
    assert split["head"] == {"trainable_weights": 2, "trainable_params": 256 * 10 + 10,
                             "frozen_weights": 0, "frozen_params": 0}


def test_feature_extraction_trains_the_head_and_leaves_the_base_untouched(workdir, splits, source):
    import keras

    from search.training import train_and_evaluate
    from search.training.components import build_model
    from search.training.results import TrialState

    c = config(scheme="features", weights=str(source))
    keras.utils.set_random_seed(c.train.seed)  # the head's initial weights, as the trial draws them
    initial_head = build_model(c, splits).get_layer(resnet50.HEAD).get_weights()
    result = train_and_evaluate(c, splits)
    assert result.state is TrialState.COMPLETE
    trained = result.model
    for got, want in zip(trained.get_layer(resnet50.BASE).get_weights(), base_weights(source).get_weights()):
        np.testing.assert_array_equal(got, want)  # every base weight, batch-norm statistics included
    assert any(not np.array_equal(a, b) for a, b in zip(trained.get_layer(resnet50.HEAD).get_weights(), initial_head))
    assert all(result.params[f"transfer.trainable_weights.{s}"] == 0 for s in resnet50.STAGES)
    assert result.params["transfer.embeddings"] == "computed" and result.tags["blocksweep.embeddings"] == "computed"


def test_finetuning_changes_the_unfrozen_convolutions_only(workdir, splits, source):
    from search.training import train_and_evaluate
    from search.training.results import TrialState

    # No head epochs: the one epoch is fine-tuning, so the best epoch's weights (the ones
    # kept) are fine-tuned ones. (With head epochs, a best epoch in the head phase would
    # rightly bring back the untouched base.)
    result = train_and_evaluate(config(scheme="finetune", weights=str(source), trainable_stages=1, head_epochs=0),
                                splits)
    assert result.state is TrialState.COMPLETE and result.best_epoch == 1
    before = {layer.name: layer.get_weights() for layer in base_weights(source).layers if layer.weights}
    changed = set()
    for layer in result.model.get_layer(resnet50.BASE).layers:
        if layer.weights and any(not np.array_equal(a, b) for a, b in zip(layer.get_weights(), before[layer.name])):
            changed.add(layer.name)
    assert changed == {"conv5_block1_0_conv", "conv5_block1_1_conv", "conv5_block1_2_conv", "conv5_block1_3_conv"}
    assert result.params["transfer.trainable_weights.conv5"] == 8
    assert result.params["transfer.embeddings"] == "unused"  # no head epochs: no embeddings computed
    assert json.loads(result.artifacts["trainable.json"])["conv4"]["trainable_weights"] == 0


# --------------------------------------------------------------------------- the embedding cache


def test_embedding_cache_is_reused_and_invalidated_by_weights_and_input_size(workdir, splits, source):
    from search.training import transfer, weights
    from search.training.components import build_model

    def extract(c, perturb=0.0):
        base = build_model(c, splits).get_layer(resnet50.BASE)
        weights.assign(base, weights.load(c.model))
        if perturb:
            base.set_weights([w + perturb for w in base.get_weights()])
        return transfer.embeddings(base, c, splits, "float32")

    c = config(scheme="features", weights=str(source))
    first = extract(c)
    assert not first.cached and first.path.exists() and first.train.shape == (200, 1, 1, 256)
    again = extract(c)
    assert again.cached and again.key == first.key
    np.testing.assert_array_equal(again.test, first.test)
    other_weights = extract(c, perturb=0.01)
    assert not other_weights.cached and other_weights.key != first.key
    bigger = extract(config(scheme="features", weights=str(source), input_size=64))
    assert not bigger.cached and bigger.key not in (first.key, other_weights.key)
    assert bigger.train.shape == (200, 2, 2, 256)
    assert len(list((workdir / "mlruns" / "embeddings").glob("*.npz"))) == 3


def test_a_head_only_change_trains_on_the_cached_embeddings_and_says_so(cli, write_space, tiny_cifar, source,
                                                                        tracking_uri):
    from mlflow.tracking import MlflowClient

    space = write_space(SPACE.format(weights=source, scheme="features"), "resnet.yaml")
    assert cli("train", space, "--data-dir", tiny_cifar, "--quiet") == 0
    assert cli("train", space, "--data-dir", tiny_cifar, "--quiet", "--set", "model.head=dense-drop",
               "--set", "model.dense_units=16") == 0
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("resnet-train").experiment_id],
                              order_by=["attributes.start_time ASC"])
    first, second = (r.data for r in runs)
    assert first.tags["blocksweep.embeddings"] == "computed" and second.tags["blocksweep.embeddings"] == "cached"
    assert second.params["transfer.embeddings"] == "cached"
    assert second.params["transfer.embedding_key"] == first.params["transfer.embedding_key"]
    assert second.params["model.head"] == "dense-drop" and "test_accuracy" in second.metrics
    # A run id is a weights source too (its model/model.keras). Scheme 1 left that run's base
    # as it found it, so the same weights give the same key: the cache follows the weights'
    # contents, not the name they were passed by.
    run_id = runs[0].info.run_id
    assert cli("train", space, "--data-dir", tiny_cifar, "--quiet", "--set", f"model.weights={run_id}") == 0
    third = client.search_runs([runs[0].info.experiment_id], order_by=["attributes.start_time DESC"])[0].data
    assert third.params["transfer.source_kind"] == "run" and run_id in third.params["transfer.source"]
    assert third.params["transfer.embeddings"] == "cached"
    assert third.params["transfer.embedding_key"] == first.params["transfer.embedding_key"]


# --------------------------------------------------------------- weights sources, and weights that do not fit

SPACE = """\
name: resnet
model: {{family: resnet50, input_size: 32, width: 0.125, stage_blocks: [1, 1, 1, 1], weights: "{weights}",
         scheme: {scheme}, head: gap, head_epochs: 1, trainable_stages: 1}}
data: {{train_size: 200, val_size: 50, test_size: 50, normalize: false, augment: {{flip: false, translate: 0}}}}
train: {{epochs: 1, batch_size: 50, optimizer: adam, learning_rate: 1.0e-3}}
"""


def wider_base_weights(folder):
    path = folder / "wide.weights.h5"
    resnet50.build_base(resnet50.Config(input_size=32, width=0.25, stage_blocks=(1, 1, 1, 1))).save_weights(path)
    return path


def vgg_model(folder):
    from search.models import build_model, vgg

    path = folder / "vgg.keras"
    build_model(vgg.Config(blocks=1, filters=4, dense_units=8), (32, 32, 3), 10).save(path)
    return path


def deeper_resnet(folder):
    from search.models import build_model

    path = folder / "deeper.keras"
    build_model(resnet50.Config(**{**TINY, "stage_blocks": (1, 1, 2, 1)}), (32, 32, 3), 10).save(path)
    return path


def test_an_export_folder_is_a_weights_source(tmp_path, source):
    from search.training import weights

    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "model.keras").write_bytes(source.read_bytes())
    loaded = weights.load(resnet50.Config(**TINY, scheme="features", weights=str(folder)))
    assert loaded.kind == "export"
    for got, want in zip(loaded.arrays, base_weights(source).get_weights()):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("make,words", [
    (wider_base_weights, ["wide.weights.h5", "do not fit this resnet50 of width 0.125"]),
    (vgg_model, ["vgg.keras", "not a Blocksweep resnet50 classifier"]),
    (deeper_resnet, ["deeper.keras", "do not fit", "weight tensors where it has"]),
    (lambda folder: folder / "absent.keras", ["absent.keras", "no such file or folder"]),
])
def test_weights_that_do_not_fit_the_architecture_are_refused_with_one_line(cli, capsys, write_space, tmp_path,
                                                                            tiny_cifar, make, words):
    space = write_space(SPACE.format(weights=make(tmp_path), scheme="finetune"), "resnet.yaml")
    code = cli("train", space, "--data-dir", tiny_cifar, "--quiet")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("blocksweep: error: model.weights")
    for word in words:
        assert word in err


def test_imagenet_weights_offline_fail_with_one_line_saying_to_pass_a_file(cli, capsys, write_space, tiny_cifar,
                                                                           monkeypatch):
    import os
    import urllib.request
    from pathlib import Path

    from search.training.weights import IMAGENET_FILE

    if (Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "models" / IMAGENET_FILE).exists():
        pytest.skip("cached: the ImageNet weights are in Keras's cache here: nothing to download")
    # Offline for sure: every download goes to a proxy on a closed port.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)  # urllib reads the proxies when it builds its opener
    space = write_space(SPACE.format(weights="imagenet", scheme="features").replace(
        "input_size: 32, width: 0.125, stage_blocks: [1, 1, 1, 1]", "input_size: 32"), "resnet.yaml")
    code = cli("train", space, "--data-dir", tiny_cifar, "--quiet")
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "model.weights imagenet: the ImageNet weights cannot be downloaded" in err
    assert "--set model.weights=PATH" in err


# --------------------------------------------------------------------------- the demo's three arms

SOURCE_SPACE = """\
name: source
model: {family: resnet50, input_size: 32, width: 0.125, stage_blocks: [1, 1, 1, 1], head: gap}
data: {classes: [0, 1, 2, 3, 4], train_size: 150, val_size: 50, test_size: 50, normalize: false,
       augment: {flip: false, translate: 0}}
train: {epochs: 1, batch_size: 50, optimizer: adam, learning_rate: 1.0e-3}
"""


def test_transfer_demo_runs_three_arms_under_one_parent_from_one_pretrained_source(cli, write_space, tiny_cifar,
                                                                                   tracking_uri, workdir):
    """spaces/transfer_demo.yaml, shrunk to tiny data: source classes 0-4, target 5-9."""
    from pathlib import Path

    import yaml

    write_space(SOURCE_SPACE, "source.yaml")
    demo = yaml.safe_load((Path(__file__).parents[1] / "spaces" / "transfer_demo.yaml").read_text())
    demo["model"].update(width=0.125, weights="pretrain:source.yaml", dense_units=16, head_epochs=1)
    demo["data"].update(train_size=100, val_size=50, test_size=50, augment={"flip": False, "translate": 0})
    demo["train"].update(epochs=1, batch_size=50)
    space = write_space(yaml.safe_dump(demo), "demo.yaml")
    assert cli("run", space, "--data-dir", tiny_cifar, "--quiet", "--keep-models", "all") == 0

    client, parents, children = sweep_runs(tracking_uri, "transfer_demo")
    assert len(parents) == 1 and len(children) == 3
    arms = {c.data.params["model.scheme"]: c for c in children}
    assert set(arms) == {"scratch", "features", "finetune"}
    for arm in arms.values():
        assert arm.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert arm.data.tags["blocksweep.state"] == "completed"
        assert {"objective", "test_accuracy"} <= set(arm.data.metrics)
    # The source task was pre-trained once, and both transfer arms refer to it.
    pretrained = [p for p in (workdir / "mlruns" / "pretrained").iterdir() if p.is_dir()]
    assert len(pretrained) == 1
    for name in ("features", "finetune"):
        params = arms[name].data.params
        assert params["transfer.source_kind"] == "pretrain" and pretrained[0].name in params["transfer.source"]
        assert "source.json" in {a.path for a in client.list_artifacts(arms[name].info.run_id)}
    assert "transfer.source" not in arms["scratch"].data.params  # from scratch: no weights used
    # The embeddings were computed by the first transfer arm and reused by the second.
    cache = sorted(arms[n].data.params["transfer.embeddings"] for n in ("features", "finetune"))
    assert cache == ["cached", "computed"]
    assert arms["features"].data.params["transfer.embedding_key"] == \
        arms["finetune"].data.params["transfer.embedding_key"]
    # Scheme 1 measured its test accuracy on cached embeddings: the saved classifier,
    # evaluated on the images, gives the same.
    assert cli("evaluate", "--model", arms["features"].info.run_id, "--data-dir", tiny_cifar, "--quiet") == 0
    evaluated = client.get_run(arms["features"].info.run_id).data.metrics
    assert evaluated["evaluate_test_accuracy"] == pytest.approx(evaluated["test_accuracy"], abs=1e-6)
