"""The model zoo: a registry from the `model.family` name in a space file to its module.

Each family is one module with a `Config` record (its `family` literal is the name) and a
`build(config, input_shape, num_classes) -> keras.Model`; adding a family is one new file
and one line here. Builders import Keras inside, so reading configs never loads it.
"""

from __future__ import annotations

from types import ModuleType

from search.models import allcnn, resnet50, vgg

FAMILIES: dict[str, ModuleType] = {
    "vgg": vgg,
    "allcnn": allcnn,
    "resnet50": resnet50,
}


def build_model(config, input_shape: tuple[int, int, int], num_classes: int):
    """Build the Keras model for a family config record."""
    return FAMILIES[config.family].build(config, input_shape, num_classes)


def check(config, **context) -> None:
    """A family's own checks before anything trains (a ResNet's weights file exists and fits
    its architecture); they may need Keras, so call them after `backend.select`."""
    hook = getattr(FAMILIES[config.family], "check", None)
    if hook is not None:
        hook(config, **context)
