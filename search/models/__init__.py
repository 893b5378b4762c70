"""The model zoo: a registry from the `model.family` name in a space file to its builder.

Each family is one module with `build(config, input_shape, num_classes) -> keras.Model`
(and, when the network has data-dependent weights, `fit_statistics`); its configuration
record lives in `search.config.families`. Builders import Keras inside, so importing the
zoo never loads it. `load_model` opens a saved model with `safe_mode=True` and this
package's custom layers registered.
"""

from __future__ import annotations

from types import ModuleType

from search.errors import UsageError, first_line
from search.models import allcnn, resnet50, vgg

FAMILIES: dict[str, ModuleType] = {
    "vgg": vgg,
    "allcnn": allcnn,
    "resnet50": resnet50,
}


def build_model(config, input_shape: tuple[int, int, int], num_classes: int):
    """Build the Keras model for a family config record."""
    return FAMILIES[config.family].build(config, input_shape, num_classes)


def fit_statistics(model, config, x_train) -> None:
    """Set a built model's data-dependent weights (e.g. VGG's whitening stem) from the
    training images; families without such weights have no `fit_statistics`."""
    fit = getattr(FAMILIES[config.family], "fit_statistics", None)
    if fit is not None:
        fit(model, config, x_train)


def load_model(path, compile: bool = True):
    """keras.models.load_model(path, safe_mode=True), with this package's custom layers
    registered first (a fresh process knows them only after importing their module)."""
    import keras

    import search.models.layers  # noqa: F401 - registers PatchWhitening

    return keras.models.load_model(path, safe_mode=True, compile=compile)


def open_model(path, flag: str, compile: bool = True):
    """`load_model`, with any failure (not a Keras file, damaged, unknown layer) as one
    UsageError line naming `flag` (the option the path came from)."""
    try:
        return load_model(path, compile=compile)
    except Exception as err:  # keras raises ValueError, OSError, zipfile errors...
        raise UsageError(f"{flag}: cannot load {path} as a Keras model "
                         f"({err.__class__.__name__}: {first_line(err, 200)})") from None
