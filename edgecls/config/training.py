"""The sections of the training side: `run`, `data`, `model` and `train`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from edgecls.config.common import AUGMENTATIONS, DEFAULT_EPOCHS, fail
from edgecls.models.specs import check_model_arguments


@dataclass(frozen=True)
class RunConfig:
    """Where a run lives and how it is seeded.

    Attributes:
        name: Run folder name under `runs_dir`. Defaults to `<model>-<strategy>`.
        runs_dir: Parent folder of run folders. Defaults to `runs`.
        seed: Seed for Python, NumPy and TensorFlow. Defaults to 42.
    """

    name: str | None = None
    runs_dir: str = "runs"
    seed: int = 42

    def __post_init__(self) -> None:
        if self.name is not None and (not self.name or "/" in self.name or self.name in {".", ".."}):
            fail("run.name", "a non-empty folder name without '/'", self.name)
        if self.seed < 0:
            fail("run.seed", "a non-negative integer", self.seed)


@dataclass(frozen=True)
class DataConfig:
    """The image source and the input pipeline.

    Attributes:
        source: `cifar10` (Keras' loader: downloads when online), or a path to an
            image folder or a .tar.gz/.zip archive of one. Defaults to `cifar10`.
        val_fraction: Fraction of train carved out (stratified, seeded) for
            validation. Defaults to 0.1.
        test_fraction: Fraction held out as test when the source has no `test/`
            split. Defaults to 0.2.
        limit_per_class: Keep at most this many training images per class. Defaults to all.
        test_limit_per_class: Keep at most this many test images per class. Defaults
            to all: metrics are on the full test split unless you ask otherwise.
        augment: Training augmentations among `crop`, `flip`, `color`, `mixup` and `cutmix`;
            empty for none. Mixup and CutMix blend pairs of images and their labels
            (`edgecls.data.pipeline.mix_batch`); they act in fine-tuning, not in the few epochs of
            quantization-aware training or pruning. Defaults to `("crop", "flip")`.
        mixup_alpha: Mixup's Beta(alpha, alpha) parameter. Defaults to 0.2, the mixup paper's
            ImageNet setting: weights near 0 or 1, mild mixing for fine-tuning.
        cutmix_alpha: CutMix's Beta parameter. Defaults to 1.0, the CutMix paper's (a uniform box area).
        batch_size: Images per batch. Defaults to None: 128 when fine-tuning a training split of at least
            16,000 images (12 epochs then cost what 10 do at 64; `edgecls.config.default_recipe`), else 64,
            and 64 in every later stage (their schedules were measured at 64).
        on_bad_image: `skip` (warn, count and record unreadable files) or `error`
            (stop at the first, naming it). Defaults to `skip`.
        mode: `memory` decodes every image once into RAM; `stream` reads the training split
            through tf.data from an on-disk cache of decoded images (`edgecls.data.stream`);
            `auto` streams only when the decoded images would not fit `memory_gib`. Defaults to `auto`.
        memory_gib: Memory budget for decoded images, GiB. Defaults to 60 % of the RAM available.
        cache_dir: Where the streaming cache lives. Defaults to `$XDG_CACHE_HOME/edgecls` (`~/.cache/edgecls`).
    """

    source: str = "cifar10"
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    limit_per_class: int | None = None
    test_limit_per_class: int | None = None
    augment: tuple[str, ...] = ("crop", "flip")
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 1.0
    batch_size: int | None = None
    on_bad_image: Literal["skip", "error"] = "skip"
    mode: Literal["auto", "memory", "stream"] = "auto"
    memory_gib: float | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.memory_gib is not None and not (math.isfinite(self.memory_gib) and self.memory_gib > 0):
            fail("data.memory_gib", "a positive number of GiB", self.memory_gib)
        if not self.source:
            fail("data.source", "`cifar10` or a path", self.source)
        if not 0.0 <= self.val_fraction < 0.5:
            fail("data.val_fraction", "in [0, 0.5)", self.val_fraction)
        if not 0.0 < self.test_fraction < 0.5:
            fail("data.test_fraction", "in (0, 0.5)", self.test_fraction)
        for key in ("limit_per_class", "test_limit_per_class"):
            value = getattr(self, key)
            if value is not None and value < 1:
                fail(f"data.{key}", "a positive integer", value)
        unknown = [a for a in self.augment if a not in AUGMENTATIONS]
        if unknown:
            fail("data.augment", f"a subset of {', '.join(AUGMENTATIONS)}", unknown[0])
        for key in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                fail(f"data.{key}", "a positive number", value)
        if self.batch_size is not None and not 1 <= self.batch_size <= 4096:
            fail("data.batch_size", "in [1, 4096]", self.batch_size)


@dataclass(frozen=True)
class ModelConfig:
    """The backbone and the classification head.

    Attributes:
        name: Registry name (`edgecls models` lists them). Defaults to `mobilenet`.
        alpha: Width multiplier. Defaults to the family's default (0.25 for `mobilenet`).
        input_size: Square input size in pixels, 32-224. Defaults to 128.
        weights: `imagenet`, `none`, or a path to a Keras .h5 no-top weights file.
            Defaults to `imagenet`.
        dropout: Dropout rate before the classifier. Defaults to 0.2.
    """

    name: str = "mobilenet"
    alpha: float | None = None
    input_size: int = 128
    weights: str = "imagenet"
    dropout: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", check_model_arguments(self.name, self.alpha, self.input_size, self.weights))
        if not 0.0 <= self.dropout < 1.0:
            fail("model.dropout", "in [0, 1)", self.dropout)


@dataclass(frozen=True)
class TrainConfig:
    """How `edgecls finetune` trains.

    Attributes:
        strategy: `frozen` (head only), `partial` (top `unfreeze` blocks too) or
            `full` (every layer). Defaults to `full`.
        unfreeze: Blocks to unfreeze from the top with `partial`. Defaults to 3.
        epochs: Total epochs, warm-up included. Defaults to None: 12 for a training split of at
            least 16,000 images (`edgecls.config.default_recipe`), else 10, or more for a small data
            set, enough for `min_steps` optimizer steps. A number given is trained exactly.
        warmup_epochs: Head-only epochs before the backbone is unfrozen
            (`partial`/`full`). Defaults to a tenth of the epochs, at least 1 (0 for a
            one-epoch run).
        optimizer: `adamw` (Adam with decoupled weight decay; set `weight_decay`
            to 0 for plain Adam) or `sgd` (Nesterov momentum 0.9). Defaults to `adamw`.
        head_lr: Learning rate of the head-only phase. Defaults to 1e-2 (only the
            new Dense layer trains, and short runs need the larger step).
        lr: Peak learning rate once the backbone is unfrozen. Defaults to None: 2e-3 (measured with
            BatchNorm trained, docs/benchmarks.md: 0.8885 on CIFAR-10 against 0.826 for 1e-4 with it frozen),
            3e-3 with the large-data recipe's batch of 128 (`edgecls.config.default_recipe`).
        schedule: `cosine`, `step` (x0.1 at 50 % and 75 %) or `constant`, over
            each phase. Defaults to `cosine`.
        weight_decay: Decoupled weight decay (biases excluded). Defaults to 1e-2.
        label_smoothing: Defaults to 0.1.
        batchnorm: `train` updates the BatchNorm layers of the unfrozen blocks with the
            layers they belong to; `frozen` keeps every BatchNorm in inference mode with its
            ImageNet statistics (Keras' transfer-learning advice, for data close to ImageNet).
            Defaults to `train`: CIFAR-10 upsampled from 32 px is far from ImageNet, and
            training them is most of the 6 pp the new default recipe gains (docs/benchmarks.md).
            The `frozen` strategy never trains them; `edgecls optimize` always freezes them.
        patience: Early-stopping patience in epochs on validation accuracy; 0
            disables. Defaults to 3.
        batchnorm_reestimate: Training images (un-augmented) whose batch statistics replace the
            BatchNorm moving averages once training ends; 0 for none (`edgecls.train.reestimate_batchnorm`).
            MobileNetV2's BatchNorm momentum (0.999) lags the weights of a short fine-tuning: on
            CIFAR-10, re-estimating on 12,800 images lifted its test accuracy from 0.8798 to 0.916
            (docs/benchmarks.md). Defaults to 0.
        min_steps: With `epochs` unset, the optimizer steps a run takes at least: a small data
            set gets more than 10 epochs (`edgecls.train.resolve_epochs`; docs/benchmarks.md,
            "Small data"). Defaults to 1500.
        selection: Which epoch's weights the run keeps: `best` (validation accuracy), `last`,
            or `auto` (`best` when the validation split holds at least 500 images, else `last`:
            on fewer, epoch-to-epoch differences are mostly noise and selecting on them
            over-fits the split; also `last` with `batchnorm_reestimate`, whose epochs are scored
            with statistics the kept model will not have). Early stopping only runs with `best`.
            Defaults to `auto`.
        distribute: `none` (one device), `mirrored` (`MirroredStrategy` on all local GPUs),
            `multi-worker` (`MultiWorkerMirroredStrategy` from `TF_CONFIG`), or `auto`
            (multi-worker with `TF_CONFIG`, mirrored with several GPUs, else none). With
            several replicas, `data.batch_size` is per replica and the learning rates are
            scaled by the replica count (`edgecls.distribute`). Defaults to `auto`.
        teacher: A finished run (any backbone, same classes and preprocessing) whose model
            teaches this one (`edgecls.distill`, the Keras distillation pattern); None for none.
        distill_alpha: Weight of the hard labels; 1 - alpha weighs the teacher's soft targets. Defaults to 0.5.
        temperature: Softens both distributions in the distillation term. Defaults to 4.0.
        distill_targets: `online` runs the teacher on every augmented training batch (the Keras
            pattern); `cached` runs it once on the un-augmented training and validation images
            before training (`edgecls.distill.teacher_outputs`; needs the images in memory), so
            an epoch costs what it costs without a teacher. The validation images, never
            augmented, are scored once in both modes. Defaults to `online`.
        ema_momentum: Momentum of an exponential moving average of the weights (Polyak averaging,
            Keras' `use_ema`), kept over the last phase (the head warm-up starts from a random head,
            which an average would drag along); validation, selection and the saved model use the
            average. The BatchNorm statistics of the layers that train are averaged too (as in timm's
            `ModelEmaV2`; `edgecls.train.WeightAverage`). One replica only: tf-keras' average fails
            under a `tf.distribute` strategy with several, so that is a config error. 0 for none. Defaults to 0.
    """

    strategy: Literal["frozen", "partial", "full"] = "full"
    unfreeze: int = 3
    epochs: int | None = None
    warmup_epochs: int | None = None
    optimizer: Literal["adamw", "sgd"] = "adamw"
    head_lr: float = 1e-2
    lr: float | None = None
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    weight_decay: float = 1e-2
    label_smoothing: float = 0.1
    batchnorm: Literal["frozen", "train"] = "train"
    patience: int = 3
    min_steps: int = 1500
    batchnorm_reestimate: int = 0
    selection: Literal["auto", "best", "last"] = "auto"
    distribute: Literal["auto", "none", "mirrored", "multi-worker"] = "auto"
    teacher: str | None = None
    distill_alpha: float = 0.5
    temperature: float = 4.0
    distill_targets: Literal["online", "cached"] = "online"
    ema_momentum: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.distill_alpha <= 1.0:
            fail("train.distill_alpha", "in [0, 1]", self.distill_alpha)
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            fail("train.temperature", "a positive number", self.temperature)
        if self.epochs is not None and self.epochs < 1:
            fail("train.epochs", "a positive integer", self.epochs)
        epochs = DEFAULT_EPOCHS if self.epochs is None else self.epochs
        if self.strategy != "frozen" and self.warmup_epochs is not None and not 0 <= self.warmup_epochs < epochs:
            fail("train.warmup_epochs", f"in [0, train.epochs) = [0, {epochs})", self.warmup_epochs)
        if self.unfreeze < 1:
            fail("train.unfreeze", "a positive integer", self.unfreeze)
        for key in ("head_lr", "lr"):
            value = getattr(self, key)
            if value is not None and not 0.0 < value <= 1.0:
                fail(f"train.{key}", "in (0, 1]", value)
        if not 0.0 <= self.weight_decay < 1.0:
            fail("train.weight_decay", "in [0, 1)", self.weight_decay)
        if not 0.0 <= self.label_smoothing < 1.0:
            fail("train.label_smoothing", "in [0, 1)", self.label_smoothing)
        if self.patience < 0:
            fail("train.patience", "a non-negative integer", self.patience)
        if self.min_steps < 0:
            fail("train.min_steps", "a non-negative integer", self.min_steps)
        if self.batchnorm_reestimate < 0:
            fail("train.batchnorm_reestimate", "a non-negative number of images", self.batchnorm_reestimate)
        if not 0.0 <= self.ema_momentum < 1.0:
            fail("train.ema_momentum", "in [0, 1)", self.ema_momentum)
