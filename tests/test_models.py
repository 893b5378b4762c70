"""The model zoo: exact layer sequences, pinned parameter counts, the registry."""

from __future__ import annotations

import pytest

from search.models import FAMILIES, allcnn, build_model, resnet50, vgg

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


def test_allcnn_class_scores_can_drop_their_relu():
    model = build_model(allcnn.Config(width=0.1, class_relu=False), (32, 32, 3), 10)
    assert model.get_layer("conv9_classes").activation.__name__ == "linear"
    assert model.get_layer("conv8").activation.__name__ == "relu"


def test_registry_maps_every_family_name_to_its_module():
    for name, module in FAMILIES.items():
        assert module.Config().family == name
        assert callable(module.build)


# --------------------------------------------------------------------------- resnet50

TINY_RESNET = dict(input_size=32, width=0.125, stage_blocks=(1, 1, 1, 1))


def test_resnet50_is_keras_resnet50_behind_a_resize_and_a_head():
    import keras

    model = build_model(resnet50.Config(), (32, 32, 3), 10)
    assert kinds(model) == ["Resizing", "Functional", "Functional"]  # preprocess_input is ops, not layers
    assert model.get_layer("resize").output.shape[1:] == (64, 64, 3)
    base = model.get_layer(resnet50.BASE)
    reference = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    assert [layer.name for layer in base.layers[1:]] == [layer.name for layer in reference.layers[1:]]
    assert base.count_params() == 23_587_712  # ResNet50 without its top
    assert base.output.shape[1:] == (2, 2, 2048)  # 64x64 in, stride 32
    # gap head: global average pooling, then 2048 x 10 + 10 into the classes
    assert kinds(model.get_layer(resnet50.HEAD)) == HEAD_LAYERS["gap"]
    assert model.count_params() == 23_587_712 + 20_490


def test_resnet50_head_comes_from_the_vgg_head_vocabulary():
    config = resnet50.Config(**TINY_RESNET, head="dense-bn-drop", dense_units=16)
    head = build_model(config, (32, 32, 3), 10).get_layer(resnet50.HEAD)
    assert kinds(head) == HEAD_LAYERS["dense-bn-drop"]


def test_reduced_resnet_keeps_keras_topology_and_layer_names_at_full_size():
    import keras

    ours = resnet50.resnet_v1((32, 32, 3), 1.0, (3, 4, 6, 3))
    reference = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))

    def layout(model):
        return [(layer.name, layer.__class__.__name__, [tuple(w.shape) for w in layer.weights])
                for layer in model.layers[1:]]

    assert layout(ours) == layout(reference)


def test_tiny_resnet_parameter_count_is_pinned():
    # width 1/8 (stem 8 channels; bottlenecks 8/16/32/64, outputs 32..256), one block per
    # stage; by hand: conv1 1,216 + conv2 1,552 + conv3 6,688 + conv4 25,152 + conv5 97,408
    model = build_model(resnet50.Config(**TINY_RESNET), (32, 32, 3), 10)
    assert {resnet50.stage_of(layer.name) for layer in model.get_layer(resnet50.BASE).layers[1:]} == set(
        resnet50.STAGES)
    assert model.get_layer(resnet50.BASE).count_params() == 132_016
    assert model.count_params() == 132_016 + 256 * 10 + 10


def test_resnet_preprocessing_is_inside_the_model():
    """The classifier takes raw 0..255 pixels: it equals head(base(preprocess_input(x)))."""
    import keras
    import numpy as np

    model = build_model(resnet50.Config(**TINY_RESNET), (32, 32, 3), 10)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    by_hand = keras.applications.resnet50.preprocess_input(x.copy())  # numpy: BGR, minus the mean
    manual = model.get_layer(resnet50.HEAD)(model.get_layer(resnet50.BASE)(by_hand, training=False))
    np.testing.assert_allclose(model(x, training=False), manual, rtol=1e-4, atol=1e-6)


def test_resnet_refuses_standardised_pixels_and_transfer_without_weights():
    from search.config import DataConfig, RunConfig

    with pytest.raises(ValueError, match="data.normalize must be false"):
        RunConfig(model=resnet50.Config(), data=DataConfig(normalize=True))
    with pytest.raises(ValueError, match="scheme features transfers pre-trained weights"):
        resnet50.Config(scheme="features")
    with pytest.raises(ValueError, match="imagenet fit only the full ResNet50"):
        resnet50.Config(width=0.5, weights="imagenet")


# --------------------------------------------------------------- the model a trial hands over (classifier.py)


def test_standardize_is_the_data_splits_arithmetic_bit_for_bit(tiny_cifar, tmp_path):
    """Raw pixels through the saved classifier's Standardize layer, in a compiled predict,
    are exactly the standardised images the network was trained and tested on."""
    from dataclasses import replace

    import keras
    import numpy as np

    from search.config import DataConfig
    from search.data import load_cifar10, prepare
    from search.models import load_model
    from search.models.classifier import STANDARDIZE, wrap

    config = DataConfig(train_size=300, val_size=100, test_size=100)
    data = load_cifar10(tiny_cifar)
    splits, raw = prepare(data, config), prepare(data, replace(config, normalize=False))
    net = build_model(vgg.Config(blocks=1, filters=4, head="gap"), (32, 32, 3), 10)
    wrap(net, splits.mean, splits.std).save(tmp_path / "classifier.keras")
    loaded = load_model(tmp_path / "classifier.keras")  # safe_mode=True
    standardize = keras.Model(loaded.input, loaded.get_layer(STANDARDIZE).output)
    pixels = raw.x_test.astype(np.uint8)  # what a PNG gives
    assert np.array_equal(standardize.predict(pixels, verbose=0), splits.x_test)


def test_the_classifiers_tta_is_the_recipes_and_it_loads_in_safe_mode(tmp_path):
    """With TTA the classifier answers softmax(the recipe's TTA logits) of the standardised
    pixels; the saved file holds no Lambda layer and loads with safe_mode=True."""
    import keras
    import numpy as np

    from search.models import load_model
    from search.models.classifier import network, takes_raw_pixels, tta_level, wrap
    from search.training.airbench.recipe import logits_model, tta_logits

    keras.utils.set_random_seed(0)
    net = build_model(vgg.Config(blocks=1, filters=4, head="gmp", logit_scale=0.5), (32, 32, 3), 10)
    mean, std = (120.0, 110.0, 100.0), (60.0, 55.0, 50.0)
    pixels = np.random.default_rng(0).integers(0, 256, size=(6, 32, 32, 3)).astype(np.float32)
    standardised = (pixels - np.float32(mean)) / np.float32(std)
    for level in (0, 1, 2):
        classifier = wrap(net, mean, std, tta_level=level)
        classifier.save(tmp_path / f"tta{level}.keras")
        loaded = load_model(tmp_path / f"tta{level}.keras")
        assert takes_raw_pixels(loaded) and tta_level(loaded) == level and not takes_raw_pixels(network(loaded))
        assert "Lambda" not in {type(layer).__name__ for layer in loaded.layers}
        _, tta = tta_logits(logits_model(net), keras.ops.convert_to_tensor(standardised), level)
        expected = keras.ops.convert_to_numpy(keras.ops.softmax(tta))
        np.testing.assert_allclose(loaded.predict(pixels, verbose=0), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(wrap(net, mean, std, 2).predict(pixels, verbose=0),
                           wrap(net, mean, std, 0).predict(pixels, verbose=0), atol=1e-4)  # TTA changes answers
