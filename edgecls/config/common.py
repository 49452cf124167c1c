"""What every config section shares: the error helper, and the names of augmentations and stages."""

from __future__ import annotations

from typing import Any

from edgecls.errors import ConfigError

AUGMENTATIONS = ("crop", "flip", "color", "mixup", "cutmix")
MIXING = ("mixup", "cutmix")  # they mix images and labels: fine-tuning only, not the short QAT runs
EXPORT_STAGES = ("finetune", "prune", "channels", "qat", "pqat", "cqat")
PIPELINE_STAGES = ("finetune", "optimize", "export", "firmware", "validate", "bench", "report")
DEFAULT_EPOCHS = 10  # train.epochs when unset, before the small-data step budget
CHANNEL_RECOVERY_EPOCHS = 10  # a channel-pruned network is retrained like a fine-tune (OptimizeConfig.lr)
CHANNEL_RECOVERY_LR = 2e-3


def fail(key: str, allowed: str, got: Any, fix: str = "") -> None:
    """Raise the one config error form: "`key` must be <allowed>; got <value>. <fix>"."""
    raise ConfigError(f"`{key}` must be {allowed}; got {got!r}." + (f" {fix}" if fix else ""))


def check_stage(key: str, stage: str | None) -> None:
    """A run stage that has Keras weights to export (None: the most optimized one)."""
    if stage is not None and stage not in EXPORT_STAGES:
        fail(key, "one of " + ", ".join(EXPORT_STAGES), stage)
