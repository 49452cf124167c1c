"""Which layers train under each transfer strategy, and the phase plan."""

from __future__ import annotations

import pytest
import tf_keras

from edgecls.config import TrainConfig
from edgecls.errors import ConfigError
from edgecls.models import create_model
from edgecls.models.registry import HEAD_LAYERS, backbone_blocks
from edgecls.train import plan_phases, resolve_epochs, resolve_selection, set_trainable, with_default_recipe


@pytest.fixture(scope="module")
def model():
    return create_model("mobilenet", input_size=32, weights="none")[0]


def trainable_names(model):
    return {layer.name for layer in model.layers if layer.trainable and layer.weights}


def test_frozen_trains_only_the_head(model):
    summary = set_trainable(model, "mobilenet", "frozen", unfreeze=1, batchnorm="frozen")
    assert trainable_names(model) == {"predictions"}
    assert summary["trainable_params"] == 256 * 10 + 10


def test_partial_unfreezes_top_blocks_but_not_batchnorm(model):
    set_trainable(model, "mobilenet", "partial", unfreeze=2, batchnorm="frozen")
    assert trainable_names(model) == {"predictions", "conv_dw_12", "conv_pw_12", "conv_dw_13", "conv_pw_13"}
    for layer in model.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            assert not layer.trainable


def test_full_unfreezes_every_conv(model):
    set_trainable(model, "mobilenet", "full", unfreeze=1, batchnorm="frozen")
    convs = {layer.name for layer in model.layers if isinstance(layer, (tf_keras.layers.Conv2D, tf_keras.layers.DepthwiseConv2D))}
    assert trainable_names(model) == convs | {"predictions"}
    set_trainable(model, "mobilenet", "full", unfreeze=1, batchnorm="train")
    assert "conv1_bn" in trainable_names(model)


def test_partial_counts_blocks_for_every_family():
    model, _ = create_model("mobilenet_v2", input_size=32, weights="none")
    set_trainable(model, "mobilenet_v2", "partial", unfreeze=1, batchnorm="frozen")
    top = {layer.name for layer in backbone_blocks(model, "mobilenet_v2")[-1] if layer.weights}
    assert trainable_names(model) == {name for name in top if "BN" not in name and "bn" not in name} | {"predictions"}
    assert "Conv_1" in top  # the final 1x1 conv joins the last block
    assert not set(HEAD_LAYERS) & top


def test_unfreeze_beyond_blocks(model):
    with pytest.raises(ConfigError, match=r"`train.unfreeze` must be in \[1, 13\]"):
        set_trainable(model, "mobilenet", "partial", unfreeze=14, batchnorm="frozen")


def test_phase_plan():
    assert [(p.name, p.start, p.end, p.lr) for p in plan_phases(TrainConfig(strategy="frozen", epochs=3))] == [("head", 0, 3, 1e-2)]
    phases = plan_phases(TrainConfig(strategy="partial", epochs=5, warmup_epochs=2, lr=1e-4))
    assert [(p.name, p.start, p.end, p.lr, p.strategy) for p in phases] == [
        ("head", 0, 2, 1e-2, "frozen"),
        ("finetune", 2, 5, 1e-4, "partial"),
    ]
    assert [p.name for p in plan_phases(TrainConfig(strategy="full", warmup_epochs=0))] == ["finetune"]


@pytest.mark.parametrize(
    ("given", "steps_per_epoch", "expected"),
    [
        ({}, None, (10, 1)),  # no data size known: the plain default
        ({}, 704, (10, 1)),  # CIFAR-10 at batch 64: 7,040 steps already exceed the budget
        ({}, 11, (137, 14)),  # 700 images: ceil(1500 / 11) epochs, a tenth of them warm-up
        ({"min_steps": 100}, 3, (34, 3)),
        ({"epochs": 3}, 11, (3, 1)),  # a number given is trained exactly
        ({"epochs": 1}, 11, (1, 0)),
        ({"warmup_epochs": 0}, 11, (137, 0)),
    ],
)
def test_resolve_epochs_gives_small_data_its_steps(given, steps_per_epoch, expected):
    resolved = resolve_epochs(TrainConfig(**given), steps_per_epoch)
    assert (resolved.epochs, resolved.warmup_epochs) == expected


@pytest.mark.parametrize(
    ("given", "train_images", "expected"),
    [
        ({}, 45_000, (128, 3e-3, 12)),  # CIFAR-10's training split: the large-data recipe
        ({}, 16_000, (128, 3e-3, 12)),
        ({}, 15_999, (64, 2e-3, None)),  # below: batch 64 and the step budget decides the epochs
        ({}, 676, (64, 2e-3, None)),
        ({"data": {"batch_size": 32}, "train": {"lr": 1e-3, "epochs": 5}}, 45_000, (32, 1e-3, 5)),  # given values stay
        ({"data": {"batch_size": 128}}, 676, (128, 2e-3, None)),
    ],
)
def test_unset_batch_lr_and_epochs_follow_the_training_split_size(given, train_images, expected):
    from edgecls.config import config_from_dict

    resolved = with_default_recipe(config_from_dict(given), train_images)
    assert (resolved.data.batch_size, resolved.train.lr, resolved.train.epochs) == expected


def test_the_large_data_recipe_already_takes_the_small_data_step_budget():
    """From the threshold on, 12 epochs at batch 128 are at least `min_steps` steps, so no large set is under-trained."""
    from edgecls.config import config_from_dict

    for images in (16_000, 16_001, 45_000):
        resolved = with_default_recipe(config_from_dict({}), images)
        steps_per_epoch = -(-images // resolved.data.batch_size)
        assert resolve_epochs(resolved.train, steps_per_epoch).epochs * steps_per_epoch >= TrainConfig().min_steps


@pytest.mark.parametrize(
    ("selection", "val_images", "expected"),
    [("auto", 0, "last"), ("auto", 68, "last"), ("auto", 499, "last"), ("auto", 500, "best"), ("best", 68, "best"),
     ("last", 5000, "last"), ("best", 0, "last")],
)  # fmt: skip
def test_selection_needs_a_validation_split_large_enough(selection, val_images, expected):
    assert resolve_selection(TrainConfig(selection=selection), val_images) == expected


def test_auto_selection_keeps_the_last_epoch_when_batchnorm_is_reestimated():
    """Epochs scored with lagging BatchNorm statistics cannot be ranked; an explicit `best` still selects."""
    assert resolve_selection(TrainConfig(batchnorm_reestimate=12800), 5000) == "last"
    assert resolve_selection(TrainConfig(batchnorm_reestimate=12800, selection="best"), 5000) == "best"


def test_reestimated_batchnorm_holds_the_mean_of_its_batch_statistics():
    """One BatchNorm on the input: its new moving mean is the mean pixel (after preprocessing) of the images used,
    its moving variance the mean of the per-batch (unbiased) variances; the momentum is restored."""
    import numpy as np
    import tf_keras

    from edgecls.data.pipeline import preprocess_numpy
    from edgecls.train import reestimate_batchnorm

    inputs = tf_keras.Input((4, 4, 3))
    norm = tf_keras.layers.BatchNormalization(momentum=0.999)
    model = tf_keras.Model(inputs, tf_keras.layers.GlobalAveragePooling2D()(norm(inputs)))
    images = np.random.default_rng(0).integers(0, 256, (70, 4, 4, 3)).astype(np.uint8)
    used = reestimate_batchnorm(model, images, mode="tf", batch_size=16)
    assert used == 64  # whole batches only
    pixels = preprocess_numpy(images[:64], "tf").reshape(4, 16 * 16, 3)  # 4 batches of 16 images x 16 pixels
    np.testing.assert_allclose(norm.moving_mean.numpy(), pixels.mean(axis=(0, 1)), rtol=1e-5, atol=1e-6)
    unbiased = pixels.var(axis=1, ddof=1).mean(axis=0)  # Keras keeps the unbiased batch variance
    np.testing.assert_allclose(norm.moving_variance.numpy(), unbiased, rtol=1e-4)
    assert norm.momentum == 0.999
