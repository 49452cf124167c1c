"""The sections of the deployment side: `optimize`, `export`, `firmware`, `validate`, `bench`, `report`, `pipeline`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from edgecls.config.common import CHANNEL_RECOVERY_EPOCHS, CHANNEL_RECOVERY_LR, PIPELINE_STAGES, check_stage, fail


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
            fail("optimize.fit", "alone: it chooses the share of channels itself (drop `--prune-channels`/`--prune`)", self.fit)
        if self.fit_input_sizes is not None and not (self.fit_input_sizes and all(32 <= s <= 224 for s in self.fit_input_sizes)):
            fail("optimize.fit_input_sizes", "a non-empty list of input sizes in [32, 224]", list(self.fit_input_sizes))
        for key in ("fit_trials",):
            if getattr(self, key) < 1:
                fail(f"optimize.{key}", "a positive integer", getattr(self, key))
        for key in ("fit_flash_reserve", "fit_ram_reserve"):
            if getattr(self, key) < 0:
                fail(f"optimize.{key}", "bytes, 0 or more", getattr(self, key))
        if not 0.0 <= self.distill_alpha <= 1.0:
            fail("optimize.distill_alpha", "in [0, 1]", self.distill_alpha)
        if not self.temperature > 0.0:
            fail("optimize.temperature", "a positive number", self.temperature)
        if self.prune_channels is not None and not 0.0 <= self.prune_channels < 1.0:
            fail("optimize.prune_channels", "a share of channels in [0, 1)", self.prune_channels)
        ratios = self.channel_ratios
        if ratios is not None and not (
            isinstance(ratios, dict)
            and all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in ratios.items())
        ):
            fail("optimize.channel_ratios", "a map from layer name to a share in [0, 1)", ratios)
        if (self.prune_channels is not None or ratios) and (self.prune is not None or self.structured):
            fail("optimize.prune_channels", "not combined with magnitude pruning (`--prune`)", self.prune_channels)
        if self.qat_from != "auto":
            if not self.qat:
                fail("optimize.qat_from", "left at `auto` unless `optimize.qat` is on", self.qat_from)
            pruning = self.pruning_stage
            if pruning not in (None, self.qat_from):
                fail("optimize.qat_from", f"`{pruning}` or `auto` when this call writes the `{pruning}` stage", self.qat_from)
        if self.structured and self.prune is None:
            object.__setattr__(self, "prune", 0.5)
        if self.prune is not None and not 0.0 < self.prune < 1.0:
            fail("optimize.prune", "a sparsity in (0, 1)", self.prune)
        if self.structured and self.prune != 0.5:
            fail("optimize.prune", "0.5 with 2:4 structured sparsity", self.prune)
        unknown = [k for k in self.prune_layers if k not in ("conv", "dense")]
        if unknown or not self.prune_layers:
            fail("optimize.prune_layers", "a non-empty subset of conv, dense", unknown or list(self.prune_layers))
        if self.epochs is not None and self.epochs < 1:
            fail("optimize.epochs", "a positive integer", self.epochs)
        for key in ("lr", "qat_lr"):
            if getattr(self, key) is not None and not 0.0 < getattr(self, key) <= 1.0:
                fail(f"optimize.{key}", "in (0, 1]", getattr(self, key))
        if self.limit_per_class is not None and self.limit_per_class < 1:
            fail("optimize.limit_per_class", "a positive integer", self.limit_per_class)

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
        check_stage("export.stage", self.stage)
        if not 0.0 <= self.max_int8_drop <= 100.0:
            fail("export.max_int8_drop", "in [0, 100] percentage points", self.max_int8_drop)
        for key in ("max_float_layers", "fallback_per_class"):
            if getattr(self, key) < 1:
                fail(f"export.{key}", "a positive integer", getattr(self, key))
        for key, allowed in (("formats", ("tflite", "onnx")), ("precisions", ("fp32", "fp16", "dynamic", "int8"))):
            values = getattr(self, key)
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                fail(f"export.{key}", "a non-empty subset of " + ", ".join(allowed), bad[0] if bad else values)
        if "onnx" in self.formats and set(self.precisions) <= {"fp16", "dynamic"}:
            fail("export.precisions", "fp32 or int8 for ONNX (fp16 and dynamic are TFLite only)", self.precisions)
        if self.calibration_samples < 1:
            fail("export.calibration_samples", "a positive integer", self.calibration_samples)
        if self.check_per_class < 1:
            fail("export.check_per_class", "a positive integer", self.check_per_class)


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
        check_stage("firmware.stage", self.stage)
        if not 0.0 <= self.arena_margin <= 1.0:
            fail("firmware.arena_margin", "in [0, 1]", self.arena_margin)
        if self.parity_images < 1:
            fail("firmware.parity_images", "a positive integer", self.parity_images)


@dataclass(frozen=True)
class ValidateConfig:
    """The gate of `edgecls validate`: every exported file against the Keras model it came from.

    Attributes:
        stage: Only this export stage; None for all (`edgecls run`: the stage it exported).
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
        check_stage("validate.stage", self.stage)
        for key in ("min_agreement_fp32", "min_agreement_fp16", "min_agreement_tflm"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                fail(f"validate.{key}", "a fraction in [0, 1]", getattr(self, key))
        if not 0.0 <= self.max_int8_drop <= 100.0:
            fail("validate.max_int8_drop", "in [0, 100] percentage points", self.max_int8_drop)
        if self.tflm_images < 0:
            fail("validate.tflm_images", "zero or more", self.tflm_images)


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
        stage: Only this export stage's files (and firmware); None for all (`edgecls run`: the
            stage it exported).
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
    stage: str | None = None

    def __post_init__(self) -> None:
        check_stage("bench.stage", self.stage)
        if self.runs < 1:
            fail("bench.runs", "a positive integer", self.runs)
        if self.windows < 1:
            fail("bench.windows", "a positive integer", self.windows)
        if not (math.isfinite(self.window_seconds) and self.window_seconds >= 0):
            fail("bench.window_seconds", "zero or more seconds", self.window_seconds)
        if self.warmup < 0:
            fail("bench.warmup", "zero or more", self.warmup)
        if any(t < 1 for t in self.threads):
            fail("bench.threads", "positive integers", list(self.threads))
        if not self.device and not self.fleet:
            fail("bench.device", "`host` or ssh:// URLs", list(self.device))


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
            fail("report.wrong_images", "in [0, 64]", self.wrong_images)


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
            fail("pipeline.stages", "a subset of " + ", ".join(PIPELINE_STAGES) + " that includes finetune", unknown or [])
