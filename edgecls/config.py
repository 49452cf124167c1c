"""The one typed configuration object, `EdgeConfig`, with one section per stage.

Every value and combination is checked in `__post_init__`, before TensorFlow is
imported. A config loads from YAML plus dotted overrides (`train.epochs=3`), and
the resolved copy saved in a run folder reloads to an equal object.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from edgecls.errors import ConfigError
from edgecls.models.specs import check_model_arguments, get_spec

AUGMENTATIONS = ("crop", "flip", "color", "mixup", "cutmix")
MIXING = ("mixup", "cutmix")  # they mix images and labels: fine-tuning only, not the short QAT runs
BOOLEAN_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _fail(key: str, allowed: str, got: Any, fix: str = "") -> None:
    raise ConfigError(f"`{key}` must be {allowed}; got {got!r}." + (f" {fix}" if fix else ""))


def _check_stage(key: str, stage: str | None) -> None:
    """A run stage that has Keras weights to export (None: the most optimized one)."""
    if stage is not None and stage not in EXPORT_STAGES:
        _fail(key, "one of " + ", ".join(EXPORT_STAGES), stage)


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
            _fail("run.name", "a non-empty folder name without '/'", self.name)
        if self.seed < 0:
            _fail("run.seed", "a non-negative integer", self.seed)


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
        batch_size: Images per batch. Defaults to 64.
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
    batch_size: int = 64
    on_bad_image: Literal["skip", "error"] = "skip"
    mode: Literal["auto", "memory", "stream"] = "auto"
    memory_gib: float | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.memory_gib is not None and not (math.isfinite(self.memory_gib) and self.memory_gib > 0):
            _fail("data.memory_gib", "a positive number of GiB", self.memory_gib)
        if not self.source:
            _fail("data.source", "`cifar10` or a path", self.source)
        if not 0.0 <= self.val_fraction < 0.5:
            _fail("data.val_fraction", "in [0, 0.5)", self.val_fraction)
        if not 0.0 < self.test_fraction < 0.5:
            _fail("data.test_fraction", "in (0, 0.5)", self.test_fraction)
        for key in ("limit_per_class", "test_limit_per_class"):
            value = getattr(self, key)
            if value is not None and value < 1:
                _fail(f"data.{key}", "a positive integer", value)
        unknown = [a for a in self.augment if a not in AUGMENTATIONS]
        if unknown:
            _fail("data.augment", f"a subset of {', '.join(AUGMENTATIONS)}", unknown[0])
        for key in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                _fail(f"data.{key}", "a positive number", value)
        if not 1 <= self.batch_size <= 4096:
            _fail("data.batch_size", "in [1, 4096]", self.batch_size)


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
            _fail("model.dropout", "in [0, 1)", self.dropout)


DEFAULT_EPOCHS = 10  # train.epochs when unset, before the small-data step budget


@dataclass(frozen=True)
class TrainConfig:
    """How `edgecls finetune` trains.

    Attributes:
        strategy: `frozen` (head only), `partial` (top `unfreeze` blocks too) or
            `full` (every layer). Defaults to `full`.
        unfreeze: Blocks to unfreeze from the top with `partial`. Defaults to 3.
        epochs: Total epochs, warm-up included. Defaults to None: 10, or more for a small data
            set, enough for `min_steps` optimizer steps. A number given is trained exactly.
        warmup_epochs: Head-only epochs before the backbone is unfrozen
            (`partial`/`full`). Defaults to a tenth of the epochs, at least 1 (0 for a
            one-epoch run).
        optimizer: `adamw` (Adam with decoupled weight decay; set `weight_decay`
            to 0 for plain Adam) or `sgd` (Nesterov momentum 0.9). Defaults to `adamw`.
        head_lr: Learning rate of the head-only phase. Defaults to 1e-2 (only the
            new Dense layer trains, and short runs need the larger step).
        lr: Peak learning rate once the backbone is unfrozen. Defaults to 2e-3 (measured with
            BatchNorm trained, docs/benchmarks.md: 0.8885 on CIFAR-10 against 0.826 for 1e-4 with it frozen).
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
            over-fits the split). Early stopping only runs with `best`. Defaults to `auto`.
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
    lr: float = 2e-3
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
            _fail("train.distill_alpha", "in [0, 1]", self.distill_alpha)
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            _fail("train.temperature", "a positive number", self.temperature)
        if self.epochs is not None and self.epochs < 1:
            _fail("train.epochs", "a positive integer", self.epochs)
        epochs = DEFAULT_EPOCHS if self.epochs is None else self.epochs
        if self.strategy != "frozen" and self.warmup_epochs is not None and not 0 <= self.warmup_epochs < epochs:
            _fail("train.warmup_epochs", f"in [0, train.epochs) = [0, {epochs})", self.warmup_epochs)
        if self.unfreeze < 1:
            _fail("train.unfreeze", "a positive integer", self.unfreeze)
        for key in ("head_lr", "lr"):
            value = getattr(self, key)
            if not 0.0 < value <= 1.0:
                _fail(f"train.{key}", "in (0, 1]", value)
        if not 0.0 <= self.weight_decay < 1.0:
            _fail("train.weight_decay", "in [0, 1)", self.weight_decay)
        if not 0.0 <= self.label_smoothing < 1.0:
            _fail("train.label_smoothing", "in [0, 1)", self.label_smoothing)
        if self.patience < 0:
            _fail("train.patience", "a non-negative integer", self.patience)
        if self.min_steps < 0:
            _fail("train.min_steps", "a non-negative integer", self.min_steps)
        if self.batchnorm_reestimate < 0:
            _fail("train.batchnorm_reestimate", "a non-negative number of images", self.batchnorm_reestimate)
        if not 0.0 <= self.ema_momentum < 1.0:
            _fail("train.ema_momentum", "in [0, 1)", self.ema_momentum)


CHANNEL_RECOVERY_EPOCHS = 10  # a channel-pruned network is retrained like a fine-tune (OptimizeConfig.lr)
CHANNEL_RECOVERY_LR = 2e-3


@dataclass(frozen=True)
class OptimizeConfig:
    """How `edgecls optimize` prunes and quantizes a fine-tuned run.

    Attributes:
        prune: Target sparsity in (0, 1) for magnitude pruning; None for none.
        structured: 2:4 structured sparsity (implies `prune` 0.5).
        prune_layers: Which layers to prune: `conv` (standard and pointwise
            convolutions) and/or `dense` (the head). Defaults to both.
        qat: Quantization-aware training (prune-preserving after pruning).
        epochs: Fine-tuning epochs of each step. Defaults to 4, and to 10 for the recovery after
            channel pruning (`epochs_of`).
        lr: Peak learning rate while pruning (cosine-decayed). Defaults to 5e-4 (measured: 50 %
            magnitude pruning of the default model then loses no accuracy; 2 epochs at 1e-4 lost
            3.8 pp), and to the fine-tune rate 2e-3 for the recovery after channel pruning, which
            retrains a thinner network rather than nudging the same one (measured on the default
            model with 30 % removed: 4 epochs at 5e-4 left it 6.7 pp under the unpruned float
            accuracy, 10 at 2e-3 2.2 pp; docs/benchmarks.md, "Channel pruning").
        qat_lr: Peak learning rate of QAT. Defaults to 1e-5.
        qat_from: The stage QAT starts from: `auto` is the pruning stage this call writes, else
            `finetune`; `channels` or `prune` takes that stage as an earlier `optimize` call left it
            (QAT of a model recovered or chosen by `--fit` before, without redoing that work).
        skip_unsupported: Keep layers TFMOT cannot quantize in float instead of failing.
        limit_per_class: At most this many training images per class (quick runs).
        granularity: QAT weight scales `per-channel` (TFLite's default) or
            `per-tensor` (smaller files; for accelerators that need it).
            Per-tensor folds BatchNorm into the convolutions first, and wants a higher
            `qat_lr` and more epochs (measured: 5e-4, 4 epochs). Defaults to `per-channel`.
        prune_channels: Share in [0, 1) of the output channels to remove from every
            prunable convolution (stage `channels`, then `cqat` with `qat`); None for none.
        channel_ratios: Per-layer shares by producer convolution name (YAML map),
            overriding `prune_channels` for the layers it names.
        channel_criterion: What ranks the channels: `l1` or `l2` norm of the filters,
            or `bn`, the |scale| of the BatchNorm after them. Defaults to `l1`.
        channel_round_to: Kept widths are multiples of this (1: exactly the share). Defaults to 4: with
            30 % removed, multiples of 4 (which cut the 8-channel stem that multiples of 8 keep) shrank the
            TFLite Micro arena by 35 % instead of 25 % at the same accuracy; ONNX Runtime ran odd widths 2x
            slower, and its int8 ran multiples of 4 slower than multiples of 8 (docs/benchmarks.md).
        channel_teacher: Recover the channel-pruned model by distillation from the
            unpruned one (`edgecls.distill`). Defaults to False.
        distill_alpha: Weight of the hard-label loss when distilling, in [0, 1]. Defaults to 0.5.
        temperature: Distillation temperature (> 0). Defaults to 4.
        fit: A device profile (name or YAML path): search the share of channels to remove and
            the input size so that the int8 file fits it (`edgecls.optimize.fit`): flash and the TFLite Micro
            arena for a microcontroller, file size, LiteRT p50 and memory on this machine for a Linux profile;
            the backbone's other ImageNet widths are measured too and the widest that fits is named
            (a fine-tune of its own: not trained by `fit`).
        fit_input_sizes: Input sizes `fit` searches. Defaults to the fine-tuned size and 7/8 and 3/4
            of it in multiples of 8 (128 px: 128, 112, 96): a smaller image shrinks the arena without
            touching the weights, where removing channels shrinks both.
        fit_trials: Fitting candidates to train (most MACs first); the validation
            accuracy chooses among them. Defaults to 2.
        fit_flash_reserve: Flash bytes kept for the application. Defaults to 65536.
        fit_ram_reserve: RAM bytes kept for the application's stack and buffers. Defaults to 16384.
        distribute: `none`, `mirrored` (TFMOT's wrappers mirrored on all local GPUs) or `auto`
            (mirrored with several GPUs); `multi-worker` is refused (`edgecls.distribute`). Defaults to `auto`.
    """

    prune: float | None = None
    structured: bool = False
    prune_layers: tuple[str, ...] = ("conv", "dense")
    qat: bool = False
    epochs: int | None = None
    lr: float | None = None
    qat_lr: float = 1e-5
    qat_from: Literal["auto", "finetune", "prune", "channels"] = "auto"
    skip_unsupported: bool = False
    limit_per_class: int | None = None
    granularity: Literal["per-channel", "per-tensor"] = "per-channel"
    prune_channels: float | None = None
    channel_ratios: dict[str, float] | None = None
    channel_criterion: Literal["l1", "l2", "bn"] = "l1"
    channel_round_to: int = 4
    channel_teacher: bool = False
    distill_alpha: float = 0.5
    temperature: float = 4.0
    fit: str | None = None
    fit_input_sizes: tuple[int, ...] | None = None
    fit_trials: int = 2
    fit_flash_reserve: int = 65536
    fit_ram_reserve: int = 16384
    distribute: Literal["auto", "none", "mirrored", "multi-worker"] = "auto"

    def __post_init__(self) -> None:
        if self.fit is not None and (self.prune_channels is not None or self.channel_ratios or self.prune is not None):
            _fail("optimize.fit", "alone: it chooses the share of channels itself (drop `--prune-channels`/`--prune`)", self.fit)
        if self.fit_input_sizes is not None and not (self.fit_input_sizes and all(32 <= s <= 224 for s in self.fit_input_sizes)):
            _fail("optimize.fit_input_sizes", "a non-empty list of input sizes in [32, 224]", list(self.fit_input_sizes))
        for key in ("fit_trials",):
            if getattr(self, key) < 1:
                _fail(f"optimize.{key}", "a positive integer", getattr(self, key))
        for key in ("fit_flash_reserve", "fit_ram_reserve"):
            if getattr(self, key) < 0:
                _fail(f"optimize.{key}", "bytes, 0 or more", getattr(self, key))
        if not 0.0 <= self.distill_alpha <= 1.0:
            _fail("optimize.distill_alpha", "in [0, 1]", self.distill_alpha)
        if not self.temperature > 0.0:
            _fail("optimize.temperature", "a positive number", self.temperature)
        if self.prune_channels is not None and not 0.0 <= self.prune_channels < 1.0:
            _fail("optimize.prune_channels", "a share of channels in [0, 1)", self.prune_channels)
        ratios = self.channel_ratios
        if ratios is not None and not (
            isinstance(ratios, dict)
            and all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in ratios.items())
        ):
            _fail("optimize.channel_ratios", "a map from layer name to a share in [0, 1)", ratios)
        if (self.prune_channels is not None or ratios) and (self.prune is not None or self.structured):
            _fail("optimize.prune_channels", "not combined with magnitude pruning (`--prune`)", self.prune_channels)
        if self.qat_from != "auto":
            if not self.qat:
                _fail("optimize.qat_from", "left at `auto` unless `optimize.qat` is on", self.qat_from)
            pruning = self.pruning_stage
            if pruning not in (None, self.qat_from):
                _fail("optimize.qat_from", f"`{pruning}` or `auto` when this call writes the `{pruning}` stage", self.qat_from)
        if self.structured and self.prune is None:
            object.__setattr__(self, "prune", 0.5)
        if self.prune is not None and not 0.0 < self.prune < 1.0:
            _fail("optimize.prune", "a sparsity in (0, 1)", self.prune)
        if self.structured and self.prune != 0.5:
            _fail("optimize.prune", "0.5 with 2:4 structured sparsity", self.prune)
        unknown = [k for k in self.prune_layers if k not in ("conv", "dense")]
        if unknown or not self.prune_layers:
            _fail("optimize.prune_layers", "a non-empty subset of conv, dense", unknown or list(self.prune_layers))
        if self.epochs is not None and self.epochs < 1:
            _fail("optimize.epochs", "a positive integer", self.epochs)
        for key in ("lr", "qat_lr"):
            if getattr(self, key) is not None and not 0.0 < getattr(self, key) <= 1.0:
                _fail(f"optimize.{key}", "in (0, 1]", getattr(self, key))
        if self.limit_per_class is not None and self.limit_per_class < 1:
            _fail("optimize.limit_per_class", "a positive integer", self.limit_per_class)

    @property
    def pruning_stage(self) -> str | None:
        """The pruning stage this config writes: `prune` (magnitude), `channels` (channels or `fit`), or None."""
        if self.prune is not None or self.structured:
            return "prune"
        if self.prune_channels is not None or self.channel_ratios or self.fit:
            return "channels"
        return None

    def epochs_of(self, stage: str) -> int:
        """Training epochs of `stage` (`prune`, `channels` or a QAT stage): `epochs`, else its default."""
        return self.epochs or (CHANNEL_RECOVERY_EPOCHS if stage == "channels" else 4)

    def lr_of(self, stage: str) -> float:
        """Peak learning rate of `stage`: `qat_lr` for QAT, else `lr`, else the pruning kind's default."""
        if stage in ("qat", "pqat", "cqat"):
            return self.qat_lr
        return self.lr or (CHANNEL_RECOVERY_LR if stage == "channels" else 5e-4)


@dataclass(frozen=True)
class ExportConfig:
    """What `edgecls export` writes.

    Attributes:
        stage: Run stage to export (`finetune`, `prune`, `qat`, `pqat`); None
            for the most optimized one that finished.
        formats: Among `tflite`, `onnx`. Defaults to both.
        precisions: Among `fp32`, `fp16`, `dynamic` (TFLite only) and `int8`.
            Defaults to `fp32`, `int8`.
        io: Input/output type of the int8 TFLite file: `int8`, `uint8` or `float`.
            Defaults to `int8`. (ONNX int8 is QDQ with float I/O.)
        calibration: A calibration manifest (`edgecls calibrate`); None builds one
            from the run's training images (`calibration_samples`, `calibration_seed`).
        calibration_samples: Defaults to 100.
        calibration_seed: Defaults to 0.
        calibration_method: ONNX Runtime's `minmax`, `entropy` or `percentile`. Defaults to `minmax`.
        check_per_class: Test images per class in the quick accuracy check. Defaults to 50.
        granularity: int8 weight scales: `per-channel`, `per-tensor`, or `auto`
            (a QAT stage's own, fixed when it was trained; per-channel for float
            stages). Defaults to `auto`.
        strip_strings: Drop tensor names and signatures from the TFLite files
            (`flatbuffer_utils.strip_strings`; smaller flash, harder debugging). Defaults to False.
        inspect: Write the per-layer quantization error of the int8 files
            (`quant_debug.json`, `.md`, `.png`), as `edgecls inspect` does. Defaults to False.
        fallback: `auto` keeps the worst int8 layers in float while the int8 drop on
            the validation split exceeds `max_int8_drop`; `none` never. Defaults to `none`.
        max_int8_drop: Accuracy points post-training int8 may lose before `auto`
            falls back, in [0, 100]. Defaults to 1.0.
        max_float_layers: Layers `auto` may keep in float. Defaults to 3.
        float_layers: Keras layers to keep in float in the int8 files, by name
            (a hand-made fallback). Defaults to none.
        fallback_per_class: Validation images per class that measure the drop. Defaults to 100.
    """

    stage: str | None = None
    formats: tuple[str, ...] = ("tflite", "onnx")
    precisions: tuple[str, ...] = ("fp32", "int8")
    io: Literal["int8", "uint8", "float"] = "int8"
    calibration: str | None = None
    calibration_samples: int = 100
    calibration_seed: int = 0
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    check_per_class: int = 50
    granularity: Literal["auto", "per-channel", "per-tensor"] = "auto"
    strip_strings: bool = False
    inspect: bool = False
    fallback: Literal["none", "auto"] = "none"
    max_int8_drop: float = 1.0
    max_float_layers: int = 3
    float_layers: tuple[str, ...] = ()
    fallback_per_class: int = 100

    def __post_init__(self) -> None:
        _check_stage("export.stage", self.stage)
        if not 0.0 <= self.max_int8_drop <= 100.0:
            _fail("export.max_int8_drop", "in [0, 100] percentage points", self.max_int8_drop)
        for key in ("max_float_layers", "fallback_per_class"):
            if getattr(self, key) < 1:
                _fail(f"export.{key}", "a positive integer", getattr(self, key))
        for key, allowed in (("formats", ("tflite", "onnx")), ("precisions", ("fp32", "fp16", "dynamic", "int8"))):
            values = getattr(self, key)
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                _fail(f"export.{key}", "a non-empty subset of " + ", ".join(allowed), bad[0] if bad else values)
        if "onnx" in self.formats and set(self.precisions) <= {"fp16", "dynamic"}:
            _fail("export.precisions", "fp32 or int8 for ONNX (fp16 and dynamic are TFLite only)", self.precisions)
        if self.calibration_samples < 1:
            _fail("export.calibration_samples", "a positive integer", self.calibration_samples)
        if self.check_per_class < 1:
            _fail("export.check_per_class", "a positive integer", self.check_per_class)


EXPORT_STAGES = ("finetune", "prune", "channels", "qat", "pqat", "cqat")
PIPELINE_STAGES = ("finetune", "optimize", "export", "firmware", "validate", "bench", "report")


@dataclass(frozen=True)
class FirmwareConfig:
    """What `edgecls firmware` generates.

    Attributes:
        stage: Export stage whose int8 TFLite file to use; None for the most optimized exported.
        namespace: C++ namespace of the generated symbols; `none` for none. Defaults to `edgecls_model`.
        prefix: Prefix of the generated symbols (e.g. `g_`). Defaults to none.
        arena_margin: Safety margin on the measured tensor arena, in [0, 1]. Defaults to 0.1.
        parity_images: Test images compared between TFLite Micro and LiteRT. Defaults to 100.
        device: A microcontroller profile (shipped name or YAML path) to check flash and RAM against.
    """

    stage: str | None = None
    namespace: str = "edgecls_model"
    prefix: str = ""
    arena_margin: float = 0.1
    parity_images: int = 100
    device: str | None = None

    def __post_init__(self) -> None:
        _check_stage("firmware.stage", self.stage)
        if not 0.0 <= self.arena_margin <= 1.0:
            _fail("firmware.arena_margin", "in [0, 1]", self.arena_margin)
        if self.parity_images < 1:
            _fail("firmware.parity_images", "a positive integer", self.parity_images)


@dataclass(frozen=True)
class ValidateConfig:
    """The gate of `edgecls validate`: every exported file against the Keras model it came from.

    Attributes:
        stage: Only this export stage; None for all.
        min_agreement_fp32: Top-1 agreement with Keras an fp32 file needs, in [0, 1]. Defaults to 0.999.
        min_agreement_fp16: The same for fp16. Defaults to 0.995.
        max_int8_drop: Accuracy points a dynamic-range or int8 file may lose, in [0, 100]. Defaults to 1.0.
        tflm_images: Test images (stratified) for the TFLite Micro rows; 0 for none. Defaults to 200.
        min_agreement_tflm: Top-1 agreement a TFLite Micro row needs with LiteRT on the same int8
            file and images, in [0, 1] (its accuracy is judged by the LiteRT row, on every image).
            Defaults to 0.99.
    """

    stage: str | None = None
    min_agreement_fp32: float = 0.999
    min_agreement_fp16: float = 0.995
    max_int8_drop: float = 1.0
    tflm_images: int = 200
    min_agreement_tflm: float = 0.99

    def __post_init__(self) -> None:
        _check_stage("validate.stage", self.stage)
        for key in ("min_agreement_fp32", "min_agreement_fp16", "min_agreement_tflm"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                _fail(f"validate.{key}", "a fraction in [0, 1]", getattr(self, key))
        if not 0.0 <= self.max_int8_drop <= 100.0:
            _fail("validate.max_int8_drop", "in [0, 100] percentage points", self.max_int8_drop)
        if self.tflm_images < 0:
            _fail("validate.tflm_images", "zero or more", self.tflm_images)


@dataclass(frozen=True)
class BenchConfig:
    """Where and how `edgecls bench` measures.

    The method is the field's (MLPerf Tiny / EEMBC windows, TFLite `benchmark_model`
    warm-up and threads): `warmup` untimed runs, then `windows` timed windows of at
    least `window_seconds` and `runs` runs each; the figure is the median of the
    windows' medians, published with their spread.

    Attributes:
        device: Devices to measure, in parallel: `host` and/or `ssh://user@host[:port]`.
            Defaults to `host`.
        fleet: A fleet YAML file (devices with their own profile, Python and key) instead of `device`.
        profile: A device profile (shipped name or YAML path) whose budgets to check.
        windows: Timed windows per file and thread count. Defaults to 5.
        window_seconds: Least duration of a window. Defaults to 2.0.
        runs: Least timed runs of a window. Defaults to 10.
        warmup: Untimed runs first. Defaults to 10.
        threads: Thread counts; empty for 1 and all cores.
        ssh_key: Private key for the SSH devices.
        known_hosts: known_hosts file that pins the SSH devices' keys.
        remote_python: Python on the devices. Defaults to `python3`.
    """

    device: tuple[str, ...] = ("host",)
    fleet: str | None = None
    profile: str | None = None
    windows: int = 5
    window_seconds: float = 2.0
    runs: int = 10
    warmup: int = 10
    threads: tuple[int, ...] = ()
    ssh_key: str | None = None
    known_hosts: str | None = None
    remote_python: str = "python3"

    def __post_init__(self) -> None:
        if self.runs < 1:
            _fail("bench.runs", "a positive integer", self.runs)
        if self.windows < 1:
            _fail("bench.windows", "a positive integer", self.windows)
        if not (math.isfinite(self.window_seconds) and self.window_seconds >= 0):
            _fail("bench.window_seconds", "zero or more seconds", self.window_seconds)
        if self.warmup < 0:
            _fail("bench.warmup", "zero or more", self.warmup)
        if any(t < 1 for t in self.threads):
            _fail("bench.threads", "positive integers", list(self.threads))
        if not self.device and not self.fleet:
            _fail("bench.device", "`host` or ssh:// URLs", list(self.device))


@dataclass(frozen=True)
class ReportConfig:
    """What `edgecls report` shows.

    Attributes:
        wrong_images: How many of the most confidently wrong test images to show with Grad-CAM (0: none).
            Defaults to 8.
    """

    wrong_images: int = 8

    def __post_init__(self) -> None:
        if not 0 <= self.wrong_images <= 64:
            _fail("report.wrong_images", "in [0, 64]", self.wrong_images)


@dataclass(frozen=True)
class PipelineConfig:
    """What `edgecls run` chains.

    Attributes:
        stages: The stages to run, in pipeline order, among finetune, optimize, export, firmware,
            validate, bench, report. Defaults to all (optimize runs only if `optimize.prune` or `optimize.qat`
            asks for something; firmware only if an int8 TFLite file is exported).
    """

    stages: tuple[str, ...] = PIPELINE_STAGES

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in PIPELINE_STAGES]
        if unknown or "finetune" not in self.stages:
            _fail("pipeline.stages", "a subset of " + ", ".join(PIPELINE_STAGES) + " that includes finetune", unknown or [])


@dataclass(frozen=True)
class EdgeConfig:
    """The whole configuration: one section per stage."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    firmware: FirmwareConfig = field(default_factory=FirmwareConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def __post_init__(self) -> None:
        blocks = get_spec(self.model.name).num_blocks
        if self.train.strategy == "partial" and self.train.unfreeze > blocks:
            _fail(
                "train.unfreeze",
                f"in [1, {blocks}] for {self.model.name} ({blocks} blocks)",
                self.train.unfreeze,
                "Use `--strategy full` to unfreeze everything.",
            )
        if self.train.teacher and self.train.distill_targets == "cached" and self.data.mode == "stream":
            _fail("train.distill_targets", "`online` with a streamed data set (data.mode)", "cached",
                  "Cached teacher outputs need the training images in memory.")  # fmt: skip

    @property
    def run_name(self) -> str:
        """The run folder name: `run.name`, or `<model>-<strategy>`."""
        return self.run.name or f"{self.model.name}-{self.train.strategy}"

    @property
    def run_path(self) -> Path:
        """The run folder: `<runs_dir>/<run_name>`."""
        return Path(self.run.runs_dir) / self.run_name

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), suitable for YAML or JSON."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        """The resolved config as YAML, reloadable with `load_config`."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """Convert a YAML or CLI value to the field's declared type, or fail clearly."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in {"none", "null"} and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, inner, value)
    if origin is Literal:
        if value not in args:
            _fail(key, "one of " + ", ".join(map(str, args)), value)
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v and v != "none"]
        if not isinstance(value, (list, tuple)):
            _fail(key, "a list", value)
        return tuple(_coerce(key, args[0], v) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in BOOLEAN_WORDS:
            return BOOLEAN_WORDS[value.lower()]  # `--set export.strip_strings=true` arrives as a string
        _fail(key, "true or false", value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            _fail(key, "an integer", value)
        try:
            return int(value)
        except ValueError:
            _fail(key, "an integer", value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            _fail(key, "a number", value)
        try:
            return float(value)
        except ValueError:
            _fail(key, "a number", value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            _fail(key, "a string", value)
        return str(value)
    return value


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping (YAML would let the last one win silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key `{key}` is given twice (line {key_node.start_mark.line + 1}).")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse a YAML file as plain data (safe loader, no duplicate keys, UTF-8).

    Args:
        path: The file.
        what: How to name it in errors, e.g. "`--config`".

    Raises:
        ConfigError: missing, not a file, not UTF-8 text, not valid YAML, or a duplicate key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} must be an existing YAML file; got {str(path)!r}.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file; {what} must be YAML.") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}.") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None


def build_section(cls: type, values: Any, prefix: str) -> Any:
    """A `cls` dataclass from a mapping, each value coerced to its field's type; unknown keys are errors."""
    if not isinstance(values, dict):
        _fail(prefix, "a mapping", values)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"unknown config key `{prefix}.{key}`; valid keys in `{prefix}` are: {', '.join(sorted(known))}.")
    kwargs = {k: _coerce(f"{prefix}.{k}", hints[k], v) for k, v in values.items()}
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> EdgeConfig:
    """Build and check an `EdgeConfig` from a nested dict.

    Raises:
        ConfigError: an unknown key, a value of the wrong type, or an invalid combination.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of sections; got {type(values).__name__}.")
    sections = {f.name: f.type for f in dataclasses.fields(EdgeConfig)}
    hints = typing.get_type_hints(EdgeConfig)
    for key in values:
        if key not in sections:
            raise ConfigError(f"unknown config section `{key}`; valid sections are: {', '.join(sections)}.")
    built = {k: build_section(hints[k], {} if v is None else v, k) for k, v in values.items()}
    return EdgeConfig(**built)


def apply_overrides(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `values` with dotted `section.key` overrides applied (None skipped)."""
    merged = {k: dict(v or {}) for k, v in values.items()}
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"an override must look like `section.key=value`; got {dotted!r}.")
        merged.setdefault(section, {})[key] = value
    return merged


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> EdgeConfig:
    """Load a YAML config (or the defaults) and apply dotted overrides.

    Args:
        path: A YAML file written by edgecls or by hand; None for the defaults.
        overrides: `{"train.epochs": 3, ...}`; None values are ignored.

    Raises:
        ConfigError: the file is missing or not valid YAML, or a key/value is invalid.
    """
    values: Any = {}
    if path is not None:
        values = read_yaml(path, "`--config`")
        values = {} if values is None else values
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must be a mapping of config sections; got a {type(values).__name__}.")
        for section, body in values.items():
            if body is not None and not isinstance(body, dict):
                raise ConfigError(f"config section `{section}` in {path} must be a mapping of keys; got {body!r}.")
    return config_from_dict(apply_overrides(values, overrides or {}))
