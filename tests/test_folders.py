"""Your own images: `data.source: {folder: PATH}` (search/data/folders.py) and CIFAR-100,
from the space file to a prediction on a PNG of another size.

The folders are real PNG/JPEG/BMP/GIF files written from the tiny_cifar fixture."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from search.config import DataConfig, FolderSource
from search.data import load_cifar10, load_cifar100, load_folder, prepare, write_cifar100, write_image_folder
from search.errors import UsageError
from tests.conftest import REPO, synthetic_cifar

DEMO_CLASSES = ("airplane", "automobile", "bird")


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory, tiny_cifar) -> Path:
    """spaces/folder_demo.yaml's folder in small: 3 classes x 100 tiny_cifar images as 48x48 PNGs."""
    data = load_cifar10(tiny_cifar)
    pick = np.concatenate([np.flatnonzero(data.y_train == c)[:100] for c in range(3)])
    root = tmp_path_factory.mktemp("folders") / "folder_demo"
    return write_image_folder(root, data.x_train[pick], data.y_train[pick], data.label_names, size=(48, 48))


def folder_config(path, **settings) -> DataConfig:
    return DataConfig(source=FolderSource(folder=str(path)), val_size=settings.pop("val_size", 20), **settings)


def small_folder(root: Path, per_class: int = 6, classes=("a", "b"), size=(16, 16)) -> Path:
    x, y, _, _ = synthetic_cifar(per_class * len(classes) * 5, 10)
    pick = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(len(classes))])
    return write_image_folder(root, x[pick], y[pick], classes + ("",) * 10, size=size)


# --------------------------------------------------------------------------- end to end


def test_folder_demo_sweeps_compares_exports_and_predicts_a_png_of_another_size(cli, workdir, demo_folder, capsys):
    from PIL import Image

    shutil.copytree(demo_folder, workdir / "data" / "folder_demo")  # the path the space file names
    space = REPO / "spaces" / "folder_demo.yaml"
    assert cli("run", space, "--trials", "2", "--set", "train.epochs=1", "--quiet") == 0
    assert len(list((workdir / "mlruns" / "images").glob("*.npz"))) == 1  # decoded once, cached
    assert cli("compare") == 0
    capsys.readouterr()
    assert cli("export", "--out", workdir / "exp") == 0
    info = json.loads((workdir / "exp" / "classifier.json").read_text())
    assert info["label_names"] == list(DEMO_CLASSES) and info["input_shape"] == [48, 48, 3]
    assert info["dataset"] == "folder_demo"

    # A PNG of another size: predict resizes it as the loader resized the training images.
    big = workdir / "bird_big.png"
    Image.open(next((workdir / "data" / "folder_demo" / "bird").iterdir())).resize((100, 70)).save(big)
    capsys.readouterr()
    assert cli("predict", "--model", workdir / "exp", big, "--json") == 0
    (answer,) = json.loads(capsys.readouterr().out)
    assert answer["label"] in DEMO_CLASSES and set(answer["probabilities"]) == set(DEMO_CLASSES)
    # A grayscale image is converted as the loader converted the folder's (CIFAR models refuse it).
    Image.open(big).convert("L").save(workdir / "gray.png")
    assert cli("predict", "--model", workdir / "exp", workdir / "gray.png") == 0

    # evaluate reads the test split the run recorded (the folder's, drawn once).
    assert cli("evaluate", "--model", workdir / "exp", "--out", workdir / "ev") == 0
    assert json.loads((workdir / "ev" / "evaluation.json").read_text())["images"] == 60

    # Every trial's run names the folder and its digest as its dataset input.
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "folder_demo"]
    runs = client.search_runs([exp.experiment_id])
    for run in runs:
        datasets = [d.dataset for d in run.inputs.dataset_inputs]
        assert datasets and {d.name for d in datasets} == {"folder_demo"}
        assert all("data/folder_demo" in d.source and d.digest for d in datasets)


# --------------------------------------------------------------------------- the cache and the test split


def test_a_folder_is_decoded_once_and_a_change_of_content_decodes_again(workdir, demo_folder, tmp_path):
    folder = shutil.copytree(demo_folder, tmp_path / "copy")
    first = load_folder(folder_config(folder))
    second = load_folder(folder_config(folder))
    assert not first.cached and second.cached and second.decode_seconds == 0
    assert np.array_equal(first.x_train, second.x_train) and np.array_equal(first.y_test, second.y_test)
    assert first.x_train.shape[1:] == (48, 48, 3) and first.label_names == DEMO_CLASSES
    assert first.digest == second.digest

    # A file rewritten (new size and modification time): a new key, decoded again.
    from PIL import Image

    victim = sorted((folder / "bird").iterdir())[0]
    Image.new("RGB", (48, 48), (255, 0, 0)).save(victim)
    third = load_folder(folder_config(folder))
    assert not third.cached and third.digest != first.digest


def test_the_test_split_is_stratified_drawn_once_and_read_back(workdir, demo_folder):
    config = folder_config(demo_folder, test_fraction=0.2)
    data = load_folder(config)
    assert np.bincount(data.y_test).tolist() == [20, 20, 20] and len(data.y_train) == 240
    (record,) = (workdir / "mlruns" / "images").glob("*.test-0.2.json")
    chosen = json.loads(record.read_text())["test"]
    assert len(chosen) == 60 and all(Path(f).parts[0] in DEMO_CLASSES for f in chosen)

    # Later runs read the recorded list, not a fresh draw: edit it and the split follows.
    record.write_text(json.dumps({"test": chosen[:30]}))
    again = load_folder(config)
    assert len(again.y_test) == 30 and len(again.y_train) == 270


def test_an_explicit_test_folder_must_have_the_training_folders_classes(workdir, tmp_path):
    train = small_folder(tmp_path / "train", size=(20, 24))
    test = small_folder(tmp_path / "test", per_class=3, size=(40, 40))
    data = load_folder(folder_config(train, test=str(test), val_size=0))
    assert len(data.y_test) == 6 and data.x_test.shape[1:] == (20, 24, 3)  # resized to the training size
    odd = small_folder(tmp_path / "odd", per_class=3, classes=("a", "c"))
    with pytest.raises(UsageError, match=r"data.test .*odd: its class folders differ .*missing: b; not in training: c"):
        load_folder(folder_config(train, test=str(odd), val_size=0))


def test_the_default_size_is_the_most_common_and_an_asked_size_resizes(workdir, tmp_path):
    folder = small_folder(tmp_path / "f", size=(30, 40))
    small_folder(tmp_path / "f2", per_class=2, size=(10, 10))
    for source in (tmp_path / "f2").iterdir():  # fewer images of another size, in the same classes
        for i, f in enumerate(source.iterdir()):
            shutil.copy(f, folder / source.name / f"small{i}.png")
    assert load_folder(folder_config(folder, val_size=0)).x_train.shape[1:] == (30, 40, 3)
    assert load_folder(folder_config(folder, val_size=0, image_size=(12, 14))).x_train.shape[1:] == (12, 14, 3)


def test_a_default_size_over_the_limit_is_refused_and_an_asked_size_loads(workdir, tmp_path):
    folder = small_folder(tmp_path / "f", per_class=2, size=(520, 16))
    with pytest.raises(UsageError, match=r"f: its images are mostly 520x16, over the 512-pixel side .*image_size"):
        load_folder(folder_config(folder, val_size=0, test_fraction=0.25))
    data = load_folder(folder_config(folder, val_size=0, test_fraction=0.25, image_size=(64, 16)))
    assert data.x_train.shape[1:] == (64, 16, 3)


def test_mixed_modes_and_formats_become_rgb_with_a_note(workdir, tmp_path, capsys):
    from PIL import Image

    folder = small_folder(tmp_path / "f")
    Image.new("L", (16, 16), 128).save(folder / "a" / "gray.png")
    Image.new("RGBA", (16, 16), (10, 20, 30, 0)).save(folder / "a" / "rgba.png")
    Image.new("RGB", (16, 16), (200, 0, 0)).convert("P").save(folder / "b" / "palette.gif")
    Image.new("RGB", (16, 16), (0, 200, 0)).save(folder / "b" / "green.bmp")
    Image.new("RGB", (16, 16), (0, 0, 200)).save(folder / "b" / "blue.jpg", quality=95)
    data = load_folder(folder_config(folder, val_size=0, test_fraction=0.1))
    assert len(data.y_train) + len(data.y_test) == 17 and data.x_train.shape[-1] == 3
    err = capsys.readouterr().err
    assert "converted 3 images to RGB" in err and "1 grayscale" in err and "1 RGBA" in err and "alpha dropped" in err


# --------------------------------------------------------------------------- bad input


def _truncated(folder: Path) -> Path:
    victim = sorted((folder / "a").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:60])
    return victim


@pytest.mark.parametrize("make,words", [
    (lambda root: root / "nowhere", ["data.source.folder", "nowhere: no such folder"]),
    (lambda root: (root / "empty").mkdir(parents=True) or root / "empty", ["empty: no class folders"]),
    (lambda root: (small_folder(root / "f"), (root / "f" / "c").mkdir())[0],
     ["f/c: a class folder with no images"]),
    (lambda root: small_folder(root / "f", classes=("a",)), ["one class only (a/)"]),
    (lambda root: (small_folder(root / "f"), (root / "f" / "b" / "notes.txt").write_text("hi"))[0],
     ["b/notes.txt: not an image", "data.on_bad_image: skip"]),
    (lambda root: (lambda f: (_truncated(f), f)[1])(small_folder(root / "f")),
     ["a/", "corrupt or truncated image"]),
], ids=["missing", "empty", "class-without-images", "one-class", "non-image", "truncated"])
def test_a_bad_folder_is_one_line_exit_2_and_nothing_recorded(cli, workdir, write_space, capsys, make, words):
    folder = make(workdir / "in")
    space = write_space(f"""\
        name: bad
        model: {{family: vgg, blocks: 1, filters: 4, dense_units: 8}}
        data: {{source: {{folder: {folder}}}, image_size: [16, 16], val_size: 10}}
        train: {{epochs: 1, batch_size: 4}}
        """)
    assert cli("train", space, "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("blocksweep: error:"), err
    for word in words:
        assert word in err
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert sorted(p.name for p in (workdir / "mlruns").iterdir()) == ["mlflow.db"]  # no cache, no lock


def test_skip_leaves_bad_files_out_with_a_warning_that_counts_and_names_them(workdir, tmp_path, capsys):
    folder = small_folder(tmp_path / "f")
    (folder / "b" / "notes.txt").write_text("not an image")
    victim = _truncated(folder)
    data = load_folder(folder_config(folder, val_size=0, on_bad_image="skip"))
    assert len(data.y_train) + len(data.y_test) == 11
    err = capsys.readouterr().err
    assert "skipped 2 bad files" in err and "b/notes.txt" in err and f"a/{victim.name}" in err
    load_folder(folder_config(folder, val_size=0, on_bad_image="skip"))  # from the cache: warned again
    assert "skipped 2 bad files" in capsys.readouterr().err


@pytest.mark.parametrize("data,words", [
    ({"image_size": [32, 32]}, "data.image_size applies to data.source: {folder: PATH} only"),
    ({"source": {"folder": "x"}, "image_size": [600, 32]}, "each side is 1..512 pixels"),
    ({"label_mode": "coarse"}, "data.label_mode applies to data.source: cifar100 only"),
    ({"source": "imagenet"}, "source"),
])
def test_source_settings_that_do_not_fit_are_refused(data, words):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"(?s)" + words.replace("{", r"\{").replace("}", r"\}")
                       .replace("[", r"\[").replace(".", r"\.")):
        DataConfig(**data)


def test_a_sweep_cannot_search_the_data_source(cli, workdir, write_space, tiny_cifar, capsys):
    from tests.conftest import TINY_SPACE

    text = TINY_SPACE.replace("data:\n", "data:\n  source: cifar100\n")
    space = write_space(text + "  data.label_mode: {type: categorical, choices: [fine, coarse]}\n")
    assert cli("run", space, "--data-dir", tiny_cifar, "--quiet") == 2
    assert "params: data.label_mode cannot be searched" in capsys.readouterr().err


# --------------------------------------------------------------------------- CIFAR-100


@pytest.mark.parametrize("mode,classes", [("fine", 100), ("coarse", 20)])
def test_cifar100_reads_keras_layout_with_fine_or_coarse_labels(tmp_path, mode, classes):
    x, _, tx, _ = synthetic_cifar(1000, 100)
    fine, test_fine = np.arange(1000) % 100, np.arange(100) % 100
    write_cifar100(tmp_path, x, fine, fine // 5, tx, test_fine, test_fine // 5)
    data = load_cifar100(tmp_path, mode)
    assert len(data.label_names) == classes and data.name == f"CIFAR-100 ({mode})"
    assert data.y_train.max() == classes - 1 and data.x_train.shape == (1000, 32, 32, 3)
    splits = prepare(data, DataConfig(source="cifar100", label_mode=mode, val_size=10, classes=(0, 19)))
    assert splits.num_classes == 2 and splits.name == f"CIFAR-100 ({mode})"
    with pytest.raises(UsageError, match=f"data.classes: index {classes}, but the data has {classes} classes"):
        prepare(data, DataConfig(source="cifar100", label_mode=mode, val_size=10, classes=(0, classes)))


def test_a_vgg_with_more_blocks_than_the_image_size_allows_is_refused(cli, workdir, write_space, capsys):
    folder = small_folder(workdir / "f", size=(16, 16))
    space = write_space(f"""\
        name: small
        model: {{family: vgg, blocks: 5, filters: 4, dense_units: 8}}
        data: {{source: {{folder: {folder}}}, val_size: 10, test_fraction: 0.1}}
        train: {{epochs: 1, batch_size: 4}}
        """)
    assert cli("train", space, "--quiet") == 2
    assert "model.blocks 5: each block halves the images, and at 16x16 (data.image_size) at most 4 fit" in \
        capsys.readouterr().err


@pytest.mark.parametrize("family,settings", [
    ("vgg", {"blocks": 2, "filters": 4, "dense_units": 8}),
    ("allcnn", {}),
    ("resnet50", {"input_size": 32, "width": 0.125, "stage_blocks": (1, 1, 1, 1), "head": "gap"}),
])
def test_every_family_is_built_for_the_datas_image_size_and_class_count(family, settings):
    from search.config.families import FAMILIES
    from search.models import build_model

    model = build_model(FAMILIES[family](**settings), (48, 40, 3), 3)
    assert model.input_shape == (None, 48, 40, 3) and model.output_shape == (None, 3)
    assert np.asarray(model(np.zeros((2, 48, 40, 3), np.float32))).shape == (2, 3)


def test_train_on_cifar100_coarse_names_it_as_the_runs_dataset(cli, workdir, write_space, tmp_path, capsys):
    x, _, tx, _ = synthetic_cifar(400, 100)
    fine, test_fine = np.arange(400) % 100, np.arange(100) % 100
    write_cifar100(tmp_path, x, fine, fine // 5, tx, test_fine, test_fine // 5)
    space = write_space("""\
        name: c100
        model: {family: vgg, blocks: 1, filters: 4, dense_units: 8}
        data: {source: cifar100, label_mode: coarse, val_size: 40, augment: {flip: false, translate: 0}}
        train: {epochs: 1, batch_size: 50}
        """)
    assert cli("train", space, "--data-dir", tmp_path, "--quiet", "--json") == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    run = MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}").get_run(run_id)
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"CIFAR-100 (coarse)"}
    assert run.data.params["data.size.val"] == "40" and run.data.params["data.source"] == "cifar100"


# --------------------------------------------------------------------------- streaming


STREAM_SPACE = """\
    name: streamed
    model: {{family: vgg, blocks: 1, filters: 4, dense_units: 8, dropout: 0.0, head_dropout: 0.0}}
    data: {{source: {{folder: {folder}}}, val_size: 10, test_fraction: 0.2, augment: {{flip: false, translate: 0}}}}
    train: {{epochs: 2, batch_size: 64}}
    """


def test_a_folder_over_the_in_memory_limit_streams_and_trains_evaluates_exports_as_in_memory(
        cli, workdir, write_space, monkeypatch, capsys, tmp_path):
    """BLOCKSWEEP_IN_MEMORY_LIMIT below a tiny folder's decoded bytes: it streams. Its split
    (same files, pixels, mean and std) is the in-memory one; a trial trains, evaluates and
    exports through the same commands, and its numbers are the in-memory trial's (one batch
    an epoch, no dropout or augmentation: the batch order, which differs, cannot matter)."""
    from search.data import StreamedFolder
    from search.models import load_model

    folder = small_folder(workdir / "shapes", per_class=24, classes=("a", "b", "c"), size=(20, 24))  # 72 images
    config = folder_config(folder, val_size=10, test_fraction=0.2)
    memory = prepare(load_folder(config), config)
    space = write_space(STREAM_SPACE.format(folder=folder))
    assert cli("train", space, "--quiet", "--json") == 0
    in_memory = json.loads(capsys.readouterr().out)["run_id"]

    monkeypatch.setenv("BLOCKSWEEP_IN_MEMORY_LIMIT", "5000")  # bytes; the folder is 72 x 20 x 24 x 3
    data = load_folder(config)
    assert isinstance(data, StreamedFolder) and "they stream from their files" in capsys.readouterr().err
    streamed = prepare(data, config)
    assert streamed.streamed and streamed.sizes() == memory.sizes() and streamed.input_shape == (20, 24, 3)
    assert streamed.mean == pytest.approx(memory.mean, abs=1e-9) and streamed.std == pytest.approx(memory.std, abs=1e-9)
    for part in ("x_train", "x_val", "x_test"):
        assert np.array_equal(getattr(streamed, part)[:], getattr(memory, part))  # decoded batch by batch
    assert np.array_equal(streamed.y_test, memory.y_test)

    assert cli("train", space, "--quiet", "--json") == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    got, want = client.get_run(run_id).data.metrics, client.get_run(in_memory).data.metrics
    for name in ("test_accuracy", "test_loss", "best_val_accuracy"):
        assert got[name] == pytest.approx(want[name], abs=1e-4), name
    datasets = [d.dataset for d in client.get_run(run_id).inputs.dataset_inputs]
    assert {d.name for d in datasets} == {"shapes"} and len({d.digest for d in datasets}) == 3
    assert all(d.digest for d in datasets) and all("shapes" in d.source for d in datasets)

    # The kept model on the in-memory test pixels gives the test accuracy the streamed trial recorded.
    assert cli("export", "--run", run_id, "--out", tmp_path / "exp") == 0
    model = load_model(tmp_path / "exp" / "model.keras")
    raw = prepare(load_folder(config), replace(config, normalize=False))
    accuracy = float(np.mean(np.asarray(model.predict(raw.x_test[:], verbose=0)).argmax(1) == raw.y_test))
    assert accuracy == pytest.approx(got["test_accuracy"], abs=1e-6)
    assert cli("evaluate", "--model", run_id, "--out", tmp_path / "ev") == 0  # streams its test split
    assert json.loads((tmp_path / "ev" / "evaluation.json").read_text())["accuracy"] == pytest.approx(accuracy)


def test_the_airbench_recipe_refuses_a_streamed_folder_in_one_line(cli, workdir, monkeypatch, capsys):
    """The recipe keeps the training split on the device: streamed data is refused before a run."""
    folder = small_folder(workdir / "shapes", per_class=12, size=(32, 32))
    monkeypatch.setenv("BLOCKSWEEP_IN_MEMORY_LIMIT", "1000")
    assert cli("train", REPO / "spaces" / "vgg_fast.yaml", "--quiet", "--set", f"data.source={{folder: {folder}}}",
               "--set", "data.val_size=0", "--set", "data.test_fraction=0.25") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("blocksweep: error: train.recipe airbench: the recipe keeps the whole training split")
    assert "a folder over the in-memory limit streams" in err
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    assert [e.name for e in client.search_experiments()] == ["Default"]


def test_a_streamed_folder_checks_every_file_once_and_reads_its_record_back(workdir, tmp_path, monkeypatch, capsys):
    """The checking pass finds a truncated file as decoding would (error: one line; skip:
    left out, with the warning, again on reading the record back)."""
    from search.data import StreamedFolder

    folder = small_folder(tmp_path / "f")
    victim = _truncated(folder)
    monkeypatch.setenv("BLOCKSWEEP_IN_MEMORY_LIMIT", "1000")
    with pytest.raises(UsageError, match=f"a/{victim.name}: corrupt or truncated image"):
        load_folder(folder_config(folder, val_size=0))
    first = load_folder(folder_config(folder, val_size=0, on_bad_image="skip"))
    again = load_folder(folder_config(folder, val_size=0, on_bad_image="skip"))
    assert isinstance(first, StreamedFolder) and not first.cached and again.cached
    assert len(first.train_files) + len(first.test_files) == 11 and str(victim) not in first.train_files
    assert capsys.readouterr().err.count("skipped 1 bad file") == 2
    assert first.train_files == again.train_files and np.array_equal(first.sums, again.sums)
