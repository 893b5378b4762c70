"""Transfer learning: a ResNet base pre-trained on another task, reused in two schemes.

    features (scheme 1)  The base is frozen: a fixed feature extractor. Its outputs (the
                         embeddings of every train, validation and test image) are computed
                         once and cached in mlruns/embeddings/<key>.npz; the head trains on
                         them for train.epochs. A trial that only changes the head never
                         runs an image through the base again: it trains in seconds. The
                         embeddings are of the unaugmented images, so the head phase has
                         no augmentation (logged: transfer.head_augmented false).
    finetune (scheme 2)  The head first trains on the embeddings for model.head_epochs, so
                         fine-tuning starts from a trained head; then the top
                         model.trainable_stages stages of the base (conv5, conv4, ...) are
                         unfrozen, batch-norm layers excepted (they stay frozen and in
                         inference mode), and the classifier trains on the images, with the
                         data config's augmentation, for train.epochs at the lower
                         model.finetune_learning_rate.

The cache key hashes what determines the embeddings: the base's weights (their bytes,
whatever their source), input size and architecture, the data split (every image and
label), the backend, Keras version and precision. Changing any of them computes new ones.
An entry is (input_size / 32)^2 x 2,048 x width float32 values per image: 32 KB for the
full ResNet50 at 64x64 (1.9 GB for all 60,000 images), 2 KB for the demo's network.

This module registers the two schemes as a training mode with the loop
(search/training/loop.py): same arguments, same `TrialResult`. The trial's epochs are numbered across both phases (head
epochs first); each one goes to `on_epoch` and to `report`, so pruning works unchanged; the
best epoch's weights of the whole classifier are kept, whichever phase it fell in. The run
learns what happened through the result's params, tags and artifacts: the weights source,
whether the embeddings came from the cache, and the frozen/trainable split per stage.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import keras
import numpy as np

from search.models import resnet50
from search.progress import quiet_logger
from search.tracking.store import cache_dir, digest_arrays, key_of, locked, replace_atomically, splits_digest
from search.training import weights
from search.training.components import (augmentation, build_model, loss_function, optimizer, precision_policy,
                                        trial_setup)
from search.training.loop import finish, register_mode
from search.training.monitor import EpochSink, Report, TrialMonitor
from search.training.results import TrialResult

EMBED_BATCH = 256  # images per forward pass when computing embeddings (inference only)


# --------------------------------------------------------------------------- embeddings


@dataclass(frozen=True)
class Embeddings:
    """The frozen base's outputs for the train, validation and test images."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    key: str
    cached: bool  # read from the cache (True) or computed now (False)
    seconds: float  # to read or to compute them
    path: Path


def embedding_key(base, config, splits, policy: str) -> tuple[str, dict]:
    """The cache key, and the fields it hashes (written beside the cache entry)."""
    m = config.model
    fields = {"weights": digest_arrays(base.get_weights()), "input_size": m.input_size, "width": m.width,
              "stage_blocks": list(m.stage_blocks), "preprocess": "keras.applications.resnet50.preprocess_input",
              "data": splits_digest(splits), "backend": keras.backend.backend(), "keras": keras.__version__,
              "precision": policy}
    return key_of(fields), fields


def embeddings(base, config, splits, policy: str) -> Embeddings:
    """The embeddings of `splits` under `base` (with its weights loaded), from the cache
    or computed now and cached. Parallel workers wait for one another (a lock per key)."""
    key, fields = embedding_key(base, config, splits, policy)
    path = cache_dir("embeddings") / f"{key}.npz"
    started = time.perf_counter()
    with locked(path):
        cached = path.exists()
        if not cached:
            inputs = keras.Input(splits.input_shape)
            # The same base layer on a second graph: shared weights, inference mode.
            extractor = keras.Model(inputs, base(resnet50.front(inputs, config.model), training=False))
            # float32 whatever the precision policy: bf16 outputs do not round-trip through .npz.
            arrays = {name: extractor.predict(x, batch_size=EMBED_BATCH, verbose=0).astype(np.float32)
                      for name, x in (("train", splits.x_train), ("val", splits.x_val), ("test", splits.x_test))}
            tmp = path.with_name(f"{key}.tmp.npz")
            np.savez(tmp, **arrays)
            replace_atomically(tmp, path)
            path.with_suffix(".json").write_text(json.dumps(fields, indent=2))
        with np.load(path) as stored:
            arrays = {name: stored[name] for name in ("train", "val", "test")}
    return Embeddings(**arrays, key=key, cached=cached, seconds=time.perf_counter() - started, path=path)



# --------------------------------------------------------------------------- the trial


def train_and_evaluate(config, splits, *, report: Optional[Report] = None, on_epoch: Optional[EpochSink] = None,
                       progress=None) -> TrialResult:
    """Train a transfer scheme (config.model.scheme features or finetune) on `splits`; see
    the module docstring. Same contract as the loop's `train_and_evaluate`."""
    # TensorFlow warns when a tf.function retraces: here, each of the several models a
    # trial builds, and each last, partial batch of a new size. Harmless, and noise.
    with quiet_logger("tensorflow"):
        return _train(config, splits, report, on_epoch, progress)


def _train(config, splits, report, on_epoch, progress) -> TrialResult:
    m = config.model
    source = weights.load(m, data_folder=splits.source, announce=progress is not None)
    policy = precision_policy(config)
    with trial_setup(config):
        net = build_model(config, splits)
        base, head = net.get_layer(resnet50.BASE), net.get_layer(resnet50.HEAD)
        weights.assign(base, source)
        base.trainable = False
        head_epochs = config.train.epochs if m.scheme == "features" else m.head_epochs
        # Fine-tuning without head epochs never reads embeddings: none are computed then.
        cache = embeddings(base, config, splits, policy) if head_epochs else None

        total_epochs = m.trial_epochs(config.train.epochs)
        monitor = TrialMonitor(config, len(splits.x_train), report, on_epoch, progress,
                               keep=net, total_epochs=total_epochs)
        # Phase 1: the head alone, on the embeddings (scheme 1's whole training).
        if head_epochs:
            _fit(head, config, (cache.train, splits.y_train), (cache.val, splits.y_val), monitor,
                 first=0, last=head_epochs, learning_rate=config.train.learning_rate)
        # Phase 2 (scheme 2): the top stages unfrozen, on the images.
        if m.scheme == "finetune" and not (monitor.failure or monitor.pruned):
            resnet50.unfreeze_top_stages(base, m.trainable_stages)
            augment = augmentation(config, config.train.seed, splits.input_shape[:2])
            trainer = keras.Sequential([keras.Input(splits.input_shape), *augment, net], name="trainer")
            monitor.since_best = 0  # early-stopping patience counts within each phase
            _fit(trainer, config, (splits.x_train, splits.y_train), (splits.x_val, splits.y_val), monitor,
                 first=head_epochs, last=total_epochs, learning_rate=m.finetune_learning_rate)
        split = resnet50.trainable_split(net)

    record = _record(config, source, cache, split, head_epochs)
    if m.scheme == "features":
        # The base did not change: the cached test embeddings are its outputs.
        return finish(monitor, config, net, test=(cache.test, splits.y_test), scored=head, **record)
    return finish(monitor, config, net, test=(splits.x_test, splits.y_test), **record)


def _fit(model, config, train, validation, monitor, *, first: int, last: int, learning_rate: float) -> None:
    """Epochs first+1..last of the trial on `model`, with its own optimizer at `learning_rate`
    (the schedule, if any, spans this phase)."""
    phase = replace(config, train=replace(config.train, learning_rate=learning_rate, epochs=last - first))
    steps = math.ceil(len(train[0]) / config.train.batch_size)
    model.compile(optimizer=optimizer(phase, steps), loss=loss_function(config), metrics=["accuracy"])
    model.fit(*train, batch_size=config.train.batch_size, epochs=last, initial_epoch=first,
              validation_data=validation, callbacks=[monitor], verbose=0, shuffle=True)


def _record(config, source, cache: Optional[Embeddings], split: dict, head_epochs: int) -> dict:
    """What the run logs about the transfer: params, tags, artifacts."""
    params = {"transfer.source": source.description, "transfer.source_kind": source.kind,
              "transfer.embeddings": "unused" if cache is None else "cached" if cache.cached else "computed",
              "transfer.head_epochs": head_epochs,
              # Embeddings are computed once, so the head sees no augmentation; phase 2 does.
              "transfer.head_augmented": False}
    for group, counts in split.items():
        params[f"transfer.trainable_weights.{group}"] = counts["trainable_weights"]
        params[f"transfer.trainable_params.{group}"] = counts["trainable_params"]
    if cache is not None:
        params.update({"transfer.embedding_key": cache.key, "transfer.embedding_seconds": round(cache.seconds, 2)})
    tags = {"blocksweep.embeddings": params["transfer.embeddings"], "blocksweep.transfer_source": source.description}
    artifacts = {"trainable.json": json.dumps(split, indent=2)}
    if source.details:
        artifacts["source.json"] = json.dumps(source.details, indent=2)
        result = source.details.get("result", {})
        for name in ("objective", "test_accuracy"):
            if result.get(name) is not None:
                params[f"transfer.source_{name}"] = round(float(result[name]), 4)
    return {"params": params, "tags": tags, "artifacts": artifacts}


register_mode("transfer", lambda config: getattr(config.model, "transfers", False), train_and_evaluate)
