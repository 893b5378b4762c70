"""CIFAR-10 loading: safe unpickling, checks with one-line errors, stratified splits."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from search.config import DataConfig
from search.data import (TEST_BATCH, Cifar10, load_cifar10, prepare, restricted_load,
                         stratified_pick, write_batches)
from search.errors import UsageError
from tests.conftest import synthetic_cifar


class Exploit:
    """A pickle that would run a shell command when loaded by plain pickle."""

    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/blocksweep-pwned",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with pytest.raises(Exception, match="refused to load"):
        restricted_load(pickle.dumps({b"data": Payload()}))
    assert not marker.exists()


def test_malicious_batch_file_gives_one_line(tmp_path):
    folder = write_batches(tmp_path, *synthetic_cifar(50, 10))
    (folder / TEST_BATCH).write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}))
    with pytest.raises(UsageError) as err:
        load_cifar10(tmp_path)
    assert "test_batch" in str(err.value) and "posix.system" in str(err.value)
    assert "\n" not in str(err.value)


def test_loads_the_official_layout_and_both_folder_levels(tiny_cifar):
    data = load_cifar10(tiny_cifar)
    assert data.x_train.shape == (1000, 32, 32, 3) and data.x_train.dtype == np.uint8
    assert data.x_test.shape == (200, 32, 32, 3)
    assert data.label_names[0] == "airplane" and len(data.label_names) == 10
    same = load_cifar10(tiny_cifar / "cifar-10-batches-py")
    assert np.array_equal(same.x_train, data.x_train)


def test_pixels_keep_their_channel_order(tmp_path):
    x, y, tx, ty = synthetic_cifar(50, 10)
    write_batches(tmp_path, x, y, tx, ty)
    data = load_cifar10(tmp_path)
    assert np.array_equal(data.x_train, x) and np.array_equal(data.y_test, ty)


@pytest.mark.parametrize("damage,words", [
    (lambda f: (f / "data_batch_3").unlink(), ["data_batch_3", "missing"]),
    (lambda f: (f / "data_batch_2").write_bytes(b"\x80\x02garbage"), ["data_batch_2", "not a readable"]),
    (lambda f: (f / "data_batch_1").write_bytes(pickle.dumps([1, 2])), ["data_batch_1", "expected a dict"]),
    (lambda f: (f / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]})),
     ["data_batch_1", "(N, 3072)"]),
    (lambda f: (f / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]})),
     ["data_batch_1", "labels outside 0..9"]),
    (lambda f: (f / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]})),
     ["data_batch_1", "1 labels for 2 images"]),
])
def test_damaged_files_give_one_line(tmp_path, damage, words):
    folder = write_batches(tmp_path, *synthetic_cifar(50, 10))
    damage(folder)
    with pytest.raises(UsageError) as err:
        load_cifar10(tmp_path)
    for word in words:
        assert word in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_or_empty_data_dir(tmp_path):
    with pytest.raises(UsageError, match="no such directory"):
        load_cifar10(tmp_path / "nope")
    with pytest.raises(UsageError, match="no CIFAR-10 batches here"):
        load_cifar10(tmp_path)


def test_env_variable_names_the_data_dir(tiny_cifar, monkeypatch):
    monkeypatch.setenv("BLOCKSWEEP_DATA_DIR", str(tiny_cifar))
    assert load_cifar10().x_train.shape[0] == 1000


def small_dataset(n=1000):
    x, y, tx, ty = synthetic_cifar(n, 200)
    return Cifar10(x, y, tx, ty, tuple(f"c{i}" for i in range(10)), "memory")


def test_validation_split_is_stratified_seeded_and_disjoint():
    data = small_dataset()
    config = DataConfig(val_size=200, train_size=500, seed=3)
    a, b = prepare(data, config), prepare(data, config)
    assert np.array_equal(a.x_val, b.x_val)
    assert np.bincount(a.y_val).tolist() == [20] * 10
    assert np.bincount(a.y_train).tolist() == [50] * 10
    flat = lambda arr: {row.tobytes() for row in arr}  # noqa: E731
    assert not flat(a.x_val) & flat(a.x_train)


def test_normalisation_uses_training_statistics():
    splits = prepare(small_dataset(), DataConfig(val_size=200))
    assert np.allclose(splits.x_train.reshape(-1, 3).mean(0), 0, atol=1e-3)
    assert np.allclose(splits.x_train.reshape(-1, 3).std(0), 1, atol=1e-3)
    assert splits.x_train.dtype == np.float32 and len(splits.mean) == 3


def test_onehot_labels_and_class_subsets():
    splits = prepare(small_dataset(), DataConfig(val_size=100, labels="onehot", classes=(5, 6, 7, 8, 9)))
    assert splits.y_train.shape[1] == 5 and splits.num_classes == 5
    assert splits.label_names == ("c5", "c6", "c7", "c8", "c9")
    assert set(splits.y_val.argmax(1)) == {0, 1, 2, 3, 4}


def test_asking_for_more_images_than_exist_is_a_usage_error():
    with pytest.raises(UsageError, match="exceed"):
        prepare(small_dataset(100), DataConfig(val_size=90, train_size=50))


def test_stratified_pick_keeps_proportions():
    labels = np.array([0] * 80 + [1] * 20)
    picked = stratified_pick(labels, 10, np.random.default_rng(0))
    assert np.bincount(labels[picked]).tolist() == [8, 2]


@pytest.mark.realdata
def test_real_cifar10_loads_exactly(real_cifar):
    data = load_cifar10(real_cifar)
    assert data.x_train.shape == (50000, 32, 32, 3) and data.x_test.shape == (10000, 32, 32, 3)
    assert data.y_train[:2].tolist() == [6, 9] and data.y_test[:4].tolist() == [3, 8, 8, 0]
    assert np.allclose(data.x_train.reshape(-1, 3).mean(0), [125.31, 122.95, 113.87], atol=0.01)
    assert np.bincount(data.y_train).tolist() == [5000] * 10
