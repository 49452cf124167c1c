"""The model registry: every family builds one flat graph with the expected blocks."""

from __future__ import annotations

import pytest

from edgecls.errors import ConfigError, WeightsError
from edgecls.models import SPECS, create_model, list_models
from edgecls.models.registry import backbone_blocks, stem_layers
from edgecls.models.stats import model_stats


def test_registry_lists_every_spec():
    assert list_models() == sorted(SPECS) == [
        "mobilenet", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "resnet50",
    ]  # fmt: skip


@pytest.mark.parametrize("name", list_models())
def test_classifier_is_one_flat_graph(name):
    import tf_keras

    model, info = create_model(name, num_classes=7, input_size=32, weights="none")
    assert model.output_shape == (None, 7)
    assert model.input_shape == (None, 32, 32, 3)
    assert not any(isinstance(layer, tf_keras.Model) for layer in model.layers), "nested Model"
    assert [layer.name for layer in model.layers[-3:]] == ["global_pool", "head_dropout", "predictions"]
    assert len(backbone_blocks(model, name)) == SPECS[name].num_blocks
    assert stem_layers(model, name), "a stem before the first block"
    assert info["source"] == "none"


@pytest.mark.parametrize(
    ("name", "size", "alpha", "macs_millions", "params_millions"),
    [
        ("mobilenet", 224, 1.0, 569, 3.24),  # MobileNet paper, Table 8: 569 M mult-adds, 4.2 M with the 1000-way top
        ("mobilenet", 128, 0.25, 13.3, 0.22),  # Table 7, 0.25/128: 14 M (13.6 M with the 1000-way top)
        ("mobilenet_v2", 224, 1.0, 300, 2.27),  # MobileNetV2 paper: 300 M MACs
        ("resnet50", 224, 1.0, 3870, 23.6),
    ],
)
def test_macs_match_the_papers(name, size, alpha, macs_millions, params_millions):
    model, _ = create_model(name, input_size=size, alpha=alpha, weights="none")
    stats = model_stats(model)
    assert stats["macs"] / 1e6 == pytest.approx(macs_millions, rel=0.03)
    assert stats["params"] / 1e6 == pytest.approx(params_millions, rel=0.03)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ConfigError, match="must be one of mobilenet, mobilenet_v2"):
        create_model("efficientnet")


def test_weights_file_of_another_architecture(tmp_path):
    model, _ = create_model("mobilenet", input_size=32, weights="none")
    path = tmp_path / "v1.h5"
    model.save_weights(str(path))
    with pytest.raises(WeightsError, match="does not fit mobilenet_v2"):
        create_model("mobilenet_v2", input_size=32, weights=str(path))


def test_imagenet_missing_offline_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr("edgecls.models.weights.fetch", lambda weights: None)
    with pytest.raises(WeightsError) as info:
        create_model("mobilenet", input_size=128, weights="imagenet")
    message = str(info.value)
    assert "mobilenet_2_5_128_tf_no_top.h5 or mobilenet_2_5_224_tf_no_top.h5" in message
    assert str(tmp_path / "models") in message


def test_imagenet_224_file_initialises_other_sizes(keras_home):
    import numpy as np

    small, info = create_model("mobilenet", input_size=128, weights="imagenet")
    assert info["file"] == "mobilenet_2_5_224_tf_no_top.h5"
    assert any("initialised from mobilenet_2_5_224_tf_no_top.h5" in w for w in info["warnings"])
    reference, _ = create_model("mobilenet", input_size=224, weights="imagenet")
    kernel = small.get_layer("conv_pw_13").get_weights()[0]
    np.testing.assert_array_equal(kernel, reference.get_layer("conv_pw_13").get_weights()[0])
    assert np.abs(kernel).sum() > 0
