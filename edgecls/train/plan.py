"""What a fine-tuning run trains, when, and how fast: its phases, trainable layers, schedules and optimizer.

Training runs in phases. `frozen` is one head-only phase. `partial` and `full`
start with a head warm-up (backbone frozen, `head_lr`), then unfreeze the top
`unfreeze` blocks (or everything) at the lower `lr`, with a short linear ramp
and a cosine or step decay.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import tf_keras

from edgecls.config import DEFAULT_EPOCHS, DEFAULT_LR, EdgeConfig, TrainConfig, default_recipe
from edgecls.errors import ConfigError
from edgecls.models.registry import HEAD_LAYERS, backbone_blocks, stem_layers


@dataclass(frozen=True)
class Phase:
    """A contiguous range of epochs trained with one set of trainable layers.

    Attributes:
        name: `head` (backbone frozen) or `finetune`.
        start, end: Global epoch range [start, end).
        lr: Peak learning rate.
        strategy: Which layers train: `frozen`, `partial` or `full`.
    """

    name: str
    start: int
    end: int
    lr: float
    strategy: str


MIN_SELECTION_IMAGES = 500  # `selection: auto` picks the best epoch on a validation split at least this large


def with_default_recipe(cfg: EdgeConfig, train_images: int) -> EdgeConfig:
    """`cfg` with an unset `data.batch_size`, `train.lr` and `train.epochs` taken from the recipe for `train_images`.

    A value the user set is kept; each unset one comes from `edgecls.config.default_recipe`, so a
    large data set fine-tunes 12 epochs at batch 128 and lr 3e-3, a small one batch 64 at 2e-3 for
    10 epochs or its step budget (`resolve_epochs`).
    """
    recipe = default_recipe(train_images)
    data = replace(cfg.data, batch_size=cfg.data.batch_size or recipe.batch_size)
    train = replace(cfg.train, lr=cfg.train.lr or recipe.lr, epochs=cfg.train.epochs or recipe.epochs)
    return replace(cfg, data=data, train=train)


def resolve_epochs(cfg: TrainConfig, steps_per_epoch: int | None = None) -> TrainConfig:
    """`cfg` with `epochs` and `warmup_epochs` made concrete for a data set of `steps_per_epoch` steps.

    Unset epochs are 10, or as many as `min_steps` optimizer steps need: 10 epochs of a
    900-image data set are 140 steps, far too few for a network to move from its ImageNet
    weights (docs/benchmarks.md, "Small data"). An unset warm-up is a tenth of the epochs
    (at least 1), so the head gets the same share of a longer run.
    """
    epochs = cfg.epochs
    if epochs is None:
        epochs = DEFAULT_EPOCHS
        if steps_per_epoch:
            epochs = max(epochs, -(-cfg.min_steps // steps_per_epoch))
    warmup = cfg.warmup_epochs
    if warmup is None:
        warmup = min(max(1, round(epochs / 10)), epochs - 1)
    return replace(cfg, epochs=epochs, warmup_epochs=warmup)


def resolve_selection(cfg: TrainConfig, val_images: int) -> str:
    """`best` or `last`: which epoch's weights a run keeps (`train.selection`; `auto` decides as below).

    `auto` keeps the last epoch on a small validation split (its differences are noise) and when
    the BatchNorm statistics are re-estimated after training: the validation accuracy of an epoch
    is then measured with the lagging statistics the kept model will not have (MobileNetV2 at
    224 px scored 0.29 and 0.18 after its first whole-network epochs), so it cannot rank epochs.
    """
    if val_images == 0:
        return "last"
    if cfg.selection != "auto":
        return cfg.selection
    if cfg.batchnorm_reestimate:
        return "last"
    return "best" if val_images >= MIN_SELECTION_IMAGES else "last"


def plan_phases(cfg: TrainConfig) -> list[Phase]:
    """The phases `cfg` trains, in order (unset epochs resolved without a step budget, an unset lr as for small data)."""
    cfg = replace(resolve_epochs(cfg), lr=cfg.lr or DEFAULT_LR)
    if cfg.strategy == "frozen":
        return [Phase("head", 0, cfg.epochs, cfg.head_lr, "frozen")]
    phases = []
    if cfg.warmup_epochs:
        phases.append(Phase("head", 0, cfg.warmup_epochs, cfg.head_lr, "frozen"))
    phases.append(Phase("finetune", cfg.warmup_epochs, cfg.epochs, cfg.lr, cfg.strategy))
    return phases


def set_trainable(model, backbone: str, strategy: str, *, unfreeze: int, batchnorm: str) -> dict[str, int]:
    """Mark which layers train under `strategy`; the head always trains.

    BatchNorm layers that do not train run in inference mode (tf-keras does this
    for `trainable=False`), so their statistics stay the ImageNet ones.

    Args:
        model: A classifier from `create_model` (modified in place).
        backbone: Its registry name (for the block layout).
        strategy: `frozen`, `partial` or `full`.
        unfreeze: Top blocks to unfreeze with `partial`.
        batchnorm: `frozen` or `train`.

    Returns:
        `trainable_layers` and `trainable_params` after the change.

    Raises:
        ConfigError: `unfreeze` exceeds the backbone's block count.
    """
    blocks = backbone_blocks(model, backbone)
    if strategy == "partial" and not 1 <= unfreeze <= len(blocks):
        raise ConfigError(f"`train.unfreeze` must be in [1, {len(blocks)}] for {backbone}; got {unfreeze}.")
    unfrozen: list[Any] = []
    if strategy == "partial":
        unfrozen = [layer for block in blocks[-unfreeze:] for layer in block]
    elif strategy == "full":
        unfrozen = stem_layers(model, backbone) + [layer for block in blocks for layer in block]
    chosen = {id(layer) for layer in unfrozen}
    for layer in model.layers:
        if layer.name in HEAD_LAYERS:
            layer.trainable = True
        elif isinstance(layer, tf_keras.layers.BatchNormalization) and batchnorm == "frozen":
            layer.trainable = False
        else:
            layer.trainable = id(layer) in chosen
    return {
        "trainable_layers": sum(1 for layer in model.layers if layer.trainable and layer.weights),
        "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
    }


def make_schedule(cfg: TrainConfig, phase: Phase, steps_per_epoch: int):
    """The learning-rate schedule of one phase, indexed by the optimizer's step."""
    schedules = tf_keras.optimizers.schedules
    steps = steps_per_epoch * (phase.end - phase.start)
    if cfg.schedule == "constant":
        return phase.lr
    if cfg.schedule == "step":
        return schedules.PiecewiseConstantDecay([int(steps * 0.5), int(steps * 0.75)], [phase.lr, phase.lr * 0.1, phase.lr * 0.01])
    ramp = steps // 20 if phase.name == "finetune" else 0  # 5 % linear ramp after unfreezing
    if ramp:
        return schedules.CosineDecay(0.0, steps - ramp, warmup_target=phase.lr, warmup_steps=ramp)
    return schedules.CosineDecay(phase.lr, steps)


def make_optimizer(cfg: TrainConfig, schedule, *, average: bool = False):
    """AdamW or Nesterov SGD with decoupled weight decay (biases and BatchNorm excluded).

    With `average` and `cfg.ema_momentum`, the optimizer also keeps an exponential moving
    average of the weights it trains (Keras' `use_ema`); `fit` ends by writing it into the model.
    """
    ema = {"use_ema": True, "ema_momentum": cfg.ema_momentum} if average and cfg.ema_momentum else {}
    if cfg.optimizer == "sgd":
        optimizer = tf_keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay or None, **ema)
    else:
        optimizer = tf_keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay, **ema)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def compile_model(model, cfg: TrainConfig, schedule, *, average: bool = False) -> None:
    """Compile with the phase's optimizer and label-smoothed cross-entropy."""
    model.compile(
        optimizer=make_optimizer(cfg, schedule, average=average),
        loss=tf_keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )
