"""The model zoo: exact layer sequences, pinned parameter counts, the registry."""

from __future__ import annotations

import pytest

from search.models import FAMILIES, allcnn, build_model, vgg

# Layer kinds of one block, as built: conv is followed by its activation unless the
# composition places `act` itself.
BLOCK_LAYERS = {
    "conv-bn-conv-pool-drop": ["Conv2D", "Activation", "BatchNormalization", "Conv2D", "Activation",
                               "MaxPooling2D", "Dropout"],
    "bn-conv-bn-conv-pool-drop": ["BatchNormalization", "Conv2D", "Activation", "BatchNormalization", "Conv2D",
                                  "Activation", "MaxPooling2D", "Dropout"],
    "conv-bn-conv-bn-pool": ["Conv2D", "Activation", "BatchNormalization", "Conv2D", "Activation",
                             "BatchNormalization", "MaxPooling2D"],
    "conv-drop-conv-drop-pool": ["Conv2D", "Activation", "Dropout", "Conv2D", "Activation", "Dropout",
                                 "MaxPooling2D"],
    "conv-pool-bn-act-conv-bn-act": ["Conv2D", "MaxPooling2D", "BatchNormalization", "Activation", "Conv2D",
                                     "BatchNormalization", "Activation"],
}
HEAD_LAYERS = {
    "dense-drop": ["Flatten", "Dense", "Dropout", "Dense"],
    "dense-bn": ["Flatten", "Dense", "BatchNormalization", "Dense"],
    "dense-bn-drop": ["Flatten", "Dense", "BatchNormalization", "Dropout", "Dense"],
    "gap": ["GlobalAveragePooling2D", "Dense"],
}


def kinds(model):
    return [layer.__class__.__name__ for layer in model.layers[1:]]  # skip the InputLayer


@pytest.mark.parametrize("block", list(BLOCK_LAYERS))
def test_every_block_composition_builds_its_exact_layers(block):
    model = build_model(vgg.Config(blocks=2, block=block, filters=4, head="gap"), (32, 32, 3), 10)
    assert kinds(model) == BLOCK_LAYERS[block] * 2 + HEAD_LAYERS["gap"]


@pytest.mark.parametrize("head", list(HEAD_LAYERS))
def test_every_head_composition_builds_its_exact_layers(head):
    model = build_model(vgg.Config(blocks=1, filters=4, head=head, dense_units=8), (32, 32, 3), 10)
    assert kinds(model)[len(BLOCK_LAYERS["conv-bn-conv-pool-drop"]):] == HEAD_LAYERS[head]


def test_two_dropout_block_uses_inner_then_block_rate():
    model = build_model(vgg.Config(blocks=1, block="conv-drop-conv-drop-pool", filters=4, dropout=0.4,
                                   inner_dropout=0.1), (32, 32, 3), 10)
    rates = [layer.rate for layer in model.layers if layer.__class__.__name__ == "Dropout"]
    assert rates[:2] == [0.1, 0.4]


def test_widths_grow_per_block_or_follow_the_list():
    assert vgg.Config(blocks=3, filters=16, growth=2).widths() == [16, 32, 64]
    assert vgg.Config(blocks=3, filters=(8, 8, 24)).widths() == [8, 8, 24]
    model = build_model(vgg.Config(blocks=3, filters=(8, 8, 24), head="gap"), (32, 32, 3), 10)
    convs = [layer.filters for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert convs == [8, 8, 8, 8, 24, 24]


def test_per_block_lists_must_match_the_block_count():
    with pytest.raises(ValueError, match="dropout has 2 values for 3 blocks"):
        vgg.Config(blocks=3, dropout=(0.1, 0.2))


def test_default_vgg_parameter_count_is_pinned():
    # 3 blocks of 32/64/128 filters, conv-bn-conv-pool-drop, dense 128, 10 classes.
    model = build_model(vgg.Config(), (32, 32, 3), 10)
    assert model.count_params() == 551_466


def test_allcnn_c_layer_list_matches_the_paper():
    model = build_model(allcnn.Config(), (32, 32, 3), 10)
    convs = [(layer.filters, layer.kernel_size, layer.strides, layer.padding, layer.activation.__name__)
             for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert convs == [
        (96, (3, 3), (1, 1), "same", "relu"), (96, (3, 3), (1, 1), "same", "relu"),
        (96, (3, 3), (2, 2), "same", "relu"),
        (192, (3, 3), (1, 1), "same", "relu"), (192, (3, 3), (1, 1), "same", "relu"),
        (192, (3, 3), (2, 2), "same", "relu"),
        (192, (3, 3), (1, 1), "valid", "relu"), (192, (1, 1), (1, 1), "same", "relu"),
        (10, (1, 1), (1, 1), "same", "relu"),
    ]
    assert kinds(model) == ["Dropout", "Conv2D", "Conv2D", "Conv2D", "Dropout", "Conv2D", "Conv2D", "Conv2D",
                            "Dropout", "Conv2D", "Conv2D", "Conv2D", "GlobalAveragePooling2D", "Activation"]
    rates = [layer.rate for layer in model.layers if layer.__class__.__name__ == "Dropout"]
    assert rates == [0.2, 0.5, 0.5]
    assert model.get_layer("conv7").output.shape[1:3] == (6, 6)  # the paper's 6x6 before averaging
    assert model.count_params() == 1_369_738


def test_registry_maps_every_family_name_to_its_module():
    for name, module in FAMILIES.items():
        assert module.Config().family == name
        assert callable(module.build)
