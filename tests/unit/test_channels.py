"""Channel pruning: the rebuilt model is the original minus exactly the removed channels."""

from __future__ import annotations

import numpy as np
import pytest

from edgecls.errors import ConfigError
from edgecls.optimize.channels import channel_groups, kept_count, prune_channels


@pytest.fixture(scope="module")
def mobilenet():
    from edgecls.models import create_model

    return create_model("mobilenet", num_classes=3, input_size=32, alpha=0.25, weights="none")[0]


def images(count: int = 4) -> np.ndarray:
    return np.random.default_rng(1).uniform(-1, 1, (count, 32, 32, 3)).astype(np.float32)


def test_groups_follow_the_mobilenet_graph(mobilenet):
    groups = {g.producer: g for g in channel_groups(mobilenet)}
    assert sorted(groups) == sorted(["conv1", *[f"conv_pw_{i}" for i in range(1, 14)]])
    assert groups["conv1"].followers == ("conv1_bn", "conv_dw_1", "conv_dw_1_bn")
    assert groups["conv1"].consumer == "conv_pw_1"
    assert groups["conv_pw_13"].consumer == "predictions"  # through global pooling and dropout


def test_removing_channels_that_contribute_nothing_keeps_the_outputs(mobilenet):
    """Zero a quarter of every group's filters and the consumer's rows for them: pruning them changes nothing."""
    import tf_keras

    model = tf_keras.models.clone_model(mobilenet)
    model.set_weights(mobilenet.get_weights())
    rng = np.random.default_rng(0)
    for layer in model.layers:  # non-trivial BatchNorm statistics, so the test is not about identity layers
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            shape = gamma.shape
            layer.set_weights([rng.uniform(0.5, 1.5, shape), rng.normal(0, 0.2, shape), rng.normal(0, 0.2, shape),
                               rng.uniform(0.5, 2.0, shape)])  # fmt: skip
    removed = {}
    for group in channel_groups(model):
        drop = rng.choice(group.channels, group.channels - kept_count(group.channels, 0.25), replace=False)
        removed[group.producer] = set(drop.tolist())
        producer = model.get_layer(group.producer)
        weights = producer.get_weights()
        weights[0][..., drop] = 0.0
        producer.set_weights(weights)
        consumer = model.get_layer(group.consumer)
        weights = consumer.get_weights()
        if isinstance(consumer, tf_keras.layers.Dense):
            weights[0][drop, :] = 0.0
        else:
            weights[0][:, :, drop, :] = 0.0
        consumer.set_weights(weights)
    thin, widths = prune_channels(model, 0.25, "l1", round_to=1)
    x = images()
    np.testing.assert_allclose(thin.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    for name, (before, after) in widths.items():
        assert after == before - len(removed[name]) and thin.get_layer(name).filters == after


@pytest.mark.parametrize("round_to", [1, 4, 8])
def test_shapes_follow_the_ratio(mobilenet, round_to):
    thin, widths = prune_channels(mobilenet, 0.3, "l2", round_to)
    for group in channel_groups(mobilenet):
        kept = kept_count(group.channels, 0.3, round_to)
        exact = group.channels * 0.7
        assert kept == (round(exact) if round_to == 1 else min(group.channels, max(round_to, round_to * round(exact / round_to))))
        assert thin.get_layer(group.producer).filters == kept
        consumer = thin.get_layer(group.consumer)
        assert consumer.get_weights()[0].shape[-2 if consumer.__class__.__name__ == "Conv2D" else 0] == kept
        for follower in group.followers:
            assert thin.get_layer(follower).output_shape[-1] == kept
    assert thin.count_params() < 0.6 * mobilenet.count_params()
    assert thin.predict(images(1), verbose=0).shape == (1, 3)


def test_per_layer_map_and_bad_names(mobilenet):
    thin, widths = prune_channels(mobilenet, {"conv_pw_13": 0.5}, "bn")
    assert widths["conv_pw_13"] == [256, 128] and widths["conv_pw_12"] == [256, 256]
    with pytest.raises(ConfigError, match="`conv_dw_3`, which is not a prunable convolution"):
        prune_channels(mobilenet, {"conv_dw_3": 0.5}, "l1")
    with pytest.raises(ConfigError, match=r"in \[0, 1\)"):
        prune_channels(mobilenet, {"conv_pw_1": 1.0}, "l1")
