"""What every config section shares: the error helper, and the names of augmentations and stages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgecls.errors import ConfigError

AUGMENTATIONS = ("crop", "flip", "color", "mixup", "cutmix")
MIXING = ("mixup", "cutmix")  # they mix images and labels: fine-tuning only, not the short QAT runs
EXPORT_STAGES = ("finetune", "prune", "channels", "qat", "pqat", "cqat")
PIPELINE_STAGES = ("finetune", "optimize", "export", "firmware", "validate", "bench", "report")
DEFAULT_EPOCHS = 10  # train.epochs when unset, before the small-data step budget
DEFAULT_BATCH_SIZE = 64  # data.batch_size when unset, in every stage but the fine-tune of a large data set
DEFAULT_LR = 2e-3  # train.lr when unset, below LARGE_DATA_IMAGES
CHANNEL_RECOVERY_EPOCHS = 10  # a channel-pruned network is retrained like a fine-tune (OptimizeConfig.lr)
CHANNEL_RECOVERY_LR = 2e-3


@dataclass(frozen=True)
class Recipe:
    """Fine-tuning defaults for a data set's size: what `data.batch_size`, `train.lr` and `train.epochs` take when unset.

    Attributes:
        batch_size: Images per batch.
        lr: Peak learning rate once the backbone is unfrozen.
        epochs: Total epochs, or None for `DEFAULT_EPOCHS` raised to the `train.min_steps` budget.
    """

    batch_size: int
    lr: float
    epochs: int | None


SMALL_DATA_RECIPE = Recipe(DEFAULT_BATCH_SIZE, DEFAULT_LR, None)
# Measured on CIFAR-10 (docs/benchmarks.md, "Fine-tuning recipe study"): batch 128 makes an epoch about 12 % cheaper
# on 2 CPU cores, so 12 epochs cost what 10 do at batch 64, and 12 epochs gain about half a point of test accuracy.
LARGE_DATA_RECIPE = Recipe(128, 3e-3, 12)
LARGE_DATA_IMAGES = 16_000  # from here on, 12 epochs at batch 128 are at least the 1,500 steps of the step budget


def default_recipe(train_images: int) -> Recipe:
    """The fine-tuning defaults for a training split of `train_images` images.

    A large split trains fewer, larger batches for more epochs in the same time; a small one keeps batch 64 and the
    step budget that gives it enough optimizer steps (docs/benchmarks.md, "Small data").
    """
    return LARGE_DATA_RECIPE if train_images >= LARGE_DATA_IMAGES else SMALL_DATA_RECIPE


def fail(key: str, allowed: str, got: Any, fix: str = "") -> None:
    """Raise the one config error form: "`key` must be <allowed>; got <value>. <fix>"."""
    raise ConfigError(f"`{key}` must be {allowed}; got {got!r}." + (f" {fix}" if fix else ""))


def check_stage(key: str, stage: str | None) -> None:
    """A run stage that has Keras weights to export (None: the most optimized one)."""
    if stage is not None and stage not in EXPORT_STAGES:
        fail(key, "one of " + ", ".join(EXPORT_STAGES), stage)
