"""The zoo builds the documented architectures exactly: parameter counts, layer names, heads, defaults."""

from __future__ import annotations

import pytest

from cnnserve.training.zoo import ZOO, UnknownModelError, build_model, get_entry

# The documented parameter counts (what `model.count_params()` reports for each documented architecture).
DOCUMENTED_PARAMS = {
    "mnist_mlp": 669_706,
    "mnist_dense30": 23_860,
    "mnist_cnn": 220_234,
    "mnist_convnet": 112_074,
    "lenet5": 44_426,
    "mnist_tf_convnet": 3_274_634,
    "fashion_mnist_cnn": 412_778,
    "cifar10_cnn": 541_094,
    "cats_dogs_cnn": 5_046_369,
    "cats_dogs_small": 3_937_409,
}


def test_zoo_holds_exactly_the_documented_models() -> None:
    assert set(ZOO) == set(DOCUMENTED_PARAMS)


@pytest.mark.parametrize("name", sorted(DOCUMENTED_PARAMS))
def test_parameter_count_matches_models_md(name: str) -> None:
    model = build_model(name)
    assert model.count_params() == DOCUMENTED_PARAMS[name]
    entry = get_entry(name)
    assert tuple(model.input_shape[1:]) == entry.input_shape
    assert model.inputs[0].name == "input"
    assert model.layers[-1].name == "output"
    assert model.output_shape[-1] == entry.output_units


@pytest.mark.parametrize("name", sorted(DOCUMENTED_PARAMS))
def test_layer_names_are_stable_and_meaningful(name: str) -> None:
    names = [layer.name for layer in build_model(name).layers]
    assert len(names) == len(set(names))
    assert "flatten" in names and "dense1" in names
    for layer_name in names:
        assert (
            layer_name == "output"
            or layer_name.rstrip("0123456789") in {"conv", "pool", "dense", "dropout"}
            or (layer_name == "flatten")
        )


def test_mnist_cnn_layers_read_like_models_md() -> None:
    model = build_model("mnist_cnn")
    assert [layer.name for layer in model.layers] == [
        "conv1",
        "pool1",
        "conv2",
        "pool2",
        "flatten",
        "dense1",
        "output",
    ]
    assert model.get_layer("conv1").filters == 32
    assert model.get_layer("conv2").filters == 64
    assert model.get_layer("dense1").units == 64
    assert model.get_layer("output").activation.__name__ == "softmax"


def test_output_heads() -> None:
    assert build_model("mnist_tf_convnet").get_layer("output").activation.__name__ == "linear"
    assert get_entry("mnist_tf_convnet").output_kind == "logits"
    for name in ("cats_dogs_cnn", "cats_dogs_small"):
        entry = get_entry(name)
        assert entry.output_kind == "sigmoid" and entry.num_classes == 2 and entry.labels == ("cat", "dog")
        assert entry.loss == "binary_crossentropy"
        assert build_model(name).get_layer("output").activation.__name__ == "sigmoid"


def test_entries_carry_their_defaults() -> None:
    fashion = get_entry("fashion_mnist_cnn")
    assert fashion.labels[0] == "T-shirt/top" and fashion.labels[-1] == "Ankle boot"
    assert (fashion.loss, fashion.optimizer, fashion.batch_size, fashion.epochs) == (
        "sparse_categorical_crossentropy",
        "adam",
        32,
        5,
    )
    assert get_entry("cifar10_cnn").labels[0] == "airplane"
    small = get_entry("cats_dogs_small")
    assert small.augmentation == "shear_zoom_flip" and small.augment
    assert not get_entry("cats_dogs_cnn").augment  # the notebook trained it without augmentation
    # The bundled-digit models: the recipe chosen by measurement (see the entries' notes).
    cnn = get_entry("mnist_cnn")
    assert (cnn.optimizer, cnn.learning_rate, cnn.schedule, cnn.batch_size, cnn.epochs) == (
        "adam",
        0.002,
        "cosine",
        64,
        30,
    )
    assert cnn.augment and cnn.augmentation == "affine" and cnn.label_smoothing == 0.1
    for entry in ZOO.values():
        pre = entry.preprocessing
        assert (pre.height, pre.width) == entry.input_shape[:2]
        assert pre.color_mode == ("rgb" if entry.input_shape[-1] == 3 else "grayscale")
        assert pre.resize_filter == "bilinear" and pre.scale == pytest.approx(1 / 255) and pre.offset == 0.0
        assert len(entry.labels) == entry.num_classes


def test_unknown_model_lists_the_zoo() -> None:
    with pytest.raises(UnknownModelError) as raised:
        get_entry("resnet50")
    message = str(raised.value)
    assert "resnet50" in message
    for name in DOCUMENTED_PARAMS:
        assert name in message
    with pytest.raises(UnknownModelError):
        build_model("nope")
