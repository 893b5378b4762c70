"""The model a trial hands over: raw pixels in, class probabilities out.

A trained network takes standardised images (search/data/splits.py) and, under the
airbench recipe, is scored with test-time augmentation computed outside it. The model a
user takes away wraps it so that every door (Keras `load_model`, `blocksweep predict` and
`evaluate`, `mlflow.pyfunc`, `mlflow models serve`) gives the accuracy the run recorded
from the pixels a PNG gives:

    pixels (n, h, w, 3): uint8, or float 0..255 ("pixels", float32 input)
    -> Standardize(mean, std)          ("standardize"; the training split's constants)
    -> the network                     (its own softmax), or, with TTA:
    -> TTAViews(level) -> the network up to its logits -> TTAMerge(level) -> softmax
    -> probabilities (n, classes)      ("probabilities" with TTA, else the network's output)

Everything is a registered layer of search/models/layers.py (no Lambda), so the model saves
as one `.keras` file that loads with `safe_mode=True`. A ResNet classifier takes raw pixels
already (its preprocessing is inside it); it is wrapped too, with mean 0 and std 1, so that
every kept model has the same shape.
"""

from __future__ import annotations

STANDARDIZE = "standardize"  # the wrapper's first layer: its presence marks a raw-pixel model
LOGITS = "logits"  # the network layer TTA averages (search/models/blocks.py: dense_head)


def wrap(net, mean, std, tta_level: int = 0):
    """`net` (standardised images -> probabilities) as a model of raw pixels; with
    `tta_level` > 0 the probabilities are the softmax of airbench's TTA logits (the net
    needs its `logits` layer: the recipe's networks have one)."""
    import keras

    from search.models.layers import Standardize, TTAMerge, TTAViews

    pixels = keras.Input(net.input_shape[1:], name="pixels")
    x = Standardize(mean, std, name=STANDARDIZE)(pixels)
    # A new model over the network's layers (sharing its weights), not the network itself:
    # the network was compiled for training, and a nested compiled model is saved with its
    # optimizer, which the saved classifier has no use for.
    if tta_level:
        logits = keras.Model(net.inputs, net.get_layer(LOGITS).output, name=f"{net.name}_logits")
        x = TTAMerge(tta_level, name="tta_merge")(logits(TTAViews(tta_level, name="tta_views")(x)))
        probabilities = keras.layers.Softmax(dtype="float32", name="probabilities")(x)
    else:
        probabilities = keras.Model(net.inputs, net.outputs, name=net.name)(x)
    return keras.Model(pixels, probabilities, name="classifier")


def takes_raw_pixels(model) -> bool:
    """Is `model` a wrapped classifier (raw pixels in)? Models kept before raw-pixel models
    existed are bare networks: they take standardised images."""
    return any(layer.name == STANDARDIZE for layer in model.layers)


def tta_level(model) -> int:
    """The TTA level inside a wrapped classifier (0: none)."""
    # By class name: a model loaded through a shipped copy of the layers module (an MLflow
    # model, search/tracking/pyfunc_model.py) holds that module's classes.
    return next((layer.level for layer in model.layers if type(layer).__name__ == "TTAViews"), 0)


def network(model):
    """The trained network inside a wrapped classifier (with TTA: the network up to its
    logits, which holds all its weights); a bare network is returned as it is."""
    if not takes_raw_pixels(model):
        return model
    import keras

    (inner,) = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return inner
