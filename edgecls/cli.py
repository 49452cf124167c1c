"""The `edgecls` command: one thin typer command per stage over importable functions.

Exit status: 0 success; 1 a stage or gate failed; 2 bad usage, config or input.
Errors are one line on stderr, `edgecls: error: ...`; `--debug` shows the
traceback. Results go to stdout, diagnostics to stderr.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from edgecls.console import is_debug, set_debug
from edgecls.errors import ConfigError, EdgeclsError, StageInterruptedError, UnsavedResultsError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fine-tune, optimize, export and validate image classifiers for edge devices.",
)
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)  # full tables in logs
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML config (e.g. a run's config.yaml).")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override any config key: section.key=value.")]
TrustOpt = Annotated[
    bool,
    typer.Option("--trust-run", help="Load model files with Lambda layers (they run code): only for runs you trust."),
]
# Config keys whose command-line flag is not `--<key>`.
FLAGS = {
    "data.source": "--data",
    "model.name": "--model",
    "export.formats": "--format",
    "export.precisions": "--precision",
    "optimize.structured": "--structured-2-4",
}


def command(function):
    """Register a CLI command: `--debug` switches tracebacks on, and Ctrl-C becomes one clear line (exit 130).

    (typer would turn KeyboardInterrupt into a silent exit 130.)
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        set_debug(bool(kwargs.get("debug")))
        try:
            return function(*args, **kwargs)
        except KeyboardInterrupt:
            raise StageInterruptedError(f"interrupted: `edgecls {function.__name__}` recorded nothing new.") from None

    return app.command(name=function.__name__.rstrip("_"))(wrapper)


def _flag(key: str) -> str:
    return FLAGS.get(key, "--" + key.split(".", 1)[-1].replace("_", "-"))


def load_cli_config(path: Path | None, flags: dict[str, Any], sets: list[str] | None, names: dict[str, str] | None = None):
    """The `EdgeConfig` of `--config`, the command's flags and `--set`; an error names the flag the user typed.

    Args:
        path: A YAML config, or None for the defaults.
        flags: Config key -> the value of the flag that sets it (None when not given).
        sets: `--set section.key=value` items.
        names: Flag names that differ from `--<key>` for this command (e.g. calibrate's `--samples`).
    """
    from edgecls.config import load_config

    try:
        return load_config(path, {**flags, **_parse_sets(sets)})
    except ConfigError as exc:
        message = str(exc)
        for key, value in flags.items():
            if value is not None and message.startswith(f"`{key}`"):
                raise ConfigError(f"`{(names or {}).get(key, _flag(key))}`" + message[len(key) + 2 :]) from None
        raise


def stage_config(run: Path, config: Path | None, flags: dict[str, Any], sets: list[str] | None):
    """The config of a later stage: `--config`, else the run's own saved config.yaml; then flags and `--set`."""
    saved = run / "config.yaml"
    return load_cli_config(config if config is not None else (saved if saved.is_file() else None), flags, sets)


def import_tensorflow() -> None:
    """Import TensorFlow once, quietly (its log level defaults to errors only)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from edgecls.run import quiet_native_stderr

    with quiet_native_stderr(enabled=not is_debug()):
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
        tf.config.list_physical_devices()  # the CUDA probe logs here on CPU-only machines
    if not is_debug():
        from edgecls.console import silence_known_noise

        silence_known_noise()


def warn(message: str) -> None:
    """One warning line on stderr."""
    err.print(f"edgecls: warning: {message}", markup=False, highlight=False, soft_wrap=True)


def _parse_sets(values: list[str] | None) -> dict[str, Any]:
    overrides = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"`--set` takes section.key=value; got {item!r}.")
        overrides[key] = value
    return overrides


@command
def finetune(
    config: ConfigOpt = None,
    data: Annotated[str | None, typer.Option(help="`cifar10`, an image folder, or a .tar.gz/.zip of one.")] = None,
    model: Annotated[str | None, typer.Option(help="Backbone name (see `edgecls models`).")] = None,
    alpha: Annotated[float | None, typer.Option(help="Width multiplier.")] = None,
    input_size: Annotated[int | None, typer.Option(help="Square input side in pixels.")] = None,
    weights: Annotated[str | None, typer.Option(help="imagenet | none | PATH to a .h5 file.")] = None,
    strategy: Annotated[str | None, typer.Option(help="frozen | partial | full.")] = None,
    unfreeze: Annotated[int | None, typer.Option(help="Top blocks to unfreeze with partial.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Total epochs, warm-up included (default: 10, more on small data).")] = None,
    warmup_epochs: Annotated[int | None, typer.Option(help="Head-only epochs first.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adamw | sgd.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate after unfreezing.")] = None,
    head_lr: Annotated[float | None, typer.Option(help="Learning rate of the head phase.")] = None,
    schedule: Annotated[str | None, typer.Option(help="cosine | step | constant.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Decoupled weight decay.")] = None,
    label_smoothing: Annotated[float | None, typer.Option(help="Label smoothing.")] = None,
    ema_momentum: Annotated[
        float | None, typer.Option(help="Momentum of a moving average of the weights, kept instead of them (0: none).")
    ] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout before the classifier.")] = None,
    augment: Annotated[str | None, typer.Option(help="Comma list of crop,flip,color,mixup,cutmix, or none.")] = None,
    limit_per_class: Annotated[int | None, typer.Option(help="At most N training images per class.")] = None,
    test_limit_per_class: Annotated[int | None, typer.Option(help="At most N test images per class.")] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Validation share of train.")] = None,
    on_bad_image: Annotated[str | None, typer.Option(help="skip | error.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    distribute: Annotated[
        str | None, typer.Option(help="auto | none | mirrored (all local GPUs) | multi-worker (TF_CONFIG).")
    ] = None,
    teacher: Annotated[str | None, typer.Option(help="A finished run whose model teaches this one (distillation).")] = None,
    distill_alpha: Annotated[float | None, typer.Option(help="Weight of the hard labels (1 - alpha: the teacher).")] = None,
    temperature: Annotated[float | None, typer.Option(help="Distillation temperature.")] = None,
    distill_targets: Annotated[
        str | None, typer.Option(help="online (teacher on every batch) | cached (teacher once, before training).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Run folder name (default <model>-<strategy>).")] = None,
    runs_dir: Annotated[str | None, typer.Option(help="Parent folder of runs.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing run folder.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an unfinished run.")] = False,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Fine-tune an ImageNet-pretrained backbone into runs/<name>/."""
    from edgecls.config import load_config

    flags = {
        "data.source": data,
        "model.name": model,
        "model.alpha": alpha,
        "model.input_size": input_size,
        "model.weights": weights,
        "model.dropout": dropout,
        "train.strategy": strategy,
        "train.unfreeze": unfreeze,
        "train.epochs": epochs,
        "train.warmup_epochs": warmup_epochs,
        "train.optimizer": optimizer,
        "train.lr": lr,
        "train.head_lr": head_lr,
        "train.schedule": schedule,
        "train.weight_decay": weight_decay,
        "train.label_smoothing": label_smoothing,
        "train.ema_momentum": ema_momentum,
        "data.batch_size": batch_size,
        "data.augment": augment,
        "data.limit_per_class": limit_per_class,
        "data.test_limit_per_class": test_limit_per_class,
        "data.val_fraction": val_fraction,
        "data.on_bad_image": on_bad_image,
        "run.seed": seed,
        "train.distribute": distribute,
        "train.teacher": teacher,
        "train.distill_alpha": distill_alpha,
        "train.temperature": temperature,
        "train.distill_targets": distill_targets,
        "run.name": name,
        "run.runs_dir": runs_dir,
    }
    cfg = load_cli_config(config, flags, set_)
    if resume:
        given = [_flag(k) for k, v in flags.items() if v is not None and k not in ("run.name", "run.runs_dir")]
        if given or set_ or config is not None:
            drop = given[0] if given else ("--set" if set_ else "--config")
            raise typer.BadParameter(f"`--resume` continues the run's saved config; drop {drop}.")
        saved = cfg.run_path / "config.yaml"
        if saved.is_file():
            cfg = load_config(saved)
    import_tensorflow()
    from edgecls.train import run_finetune

    try:
        entry = run_finetune(cfg, force=force, resume=resume)
    except KeyboardInterrupt:
        raise StageInterruptedError(
            f"interrupted; continue with `edgecls finetune --name {cfg.run_name} --runs-dir {cfg.run.runs_dir} --resume`."
        ) from None
    for line in entry["warnings"]:
        warn(line)
    _print_metrics(f"finetune: {cfg.run_path}", entry["metrics"])


@command
def optimize(
    run: Annotated[Path, typer.Argument(help="A run folder with a finished finetune stage.")],
    prune: Annotated[float | None, typer.Option(help="Target sparsity in (0, 1).")] = None,
    structured: Annotated[bool, typer.Option("--structured-2-4", help="2:4 structured sparsity.")] = False,
    prune_layers: Annotated[str | None, typer.Option(help="Comma list of conv, dense.")] = None,
    qat: Annotated[bool, typer.Option("--qat", help="Quantization-aware training (prune-preserving).")] = False,
    epochs: Annotated[int | None, typer.Option(help="Fine-tuning epochs of each step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate while pruning.")] = None,
    qat_lr: Annotated[float | None, typer.Option(help="Peak learning rate of QAT.")] = None,
    qat_from: Annotated[
        str | None, typer.Option(help="QAT of: auto | finetune | prune | channels (a stage an earlier call wrote).")
    ] = None,
    skip_unsupported: Annotated[
        bool, typer.Option("--skip-unsupported", help="Keep layers TFMOT cannot quantize in float.")
    ] = False,
    limit_per_class: Annotated[int | None, typer.Option(help="At most N training images per class.")] = None,
    granularity: Annotated[str | None, typer.Option(help="QAT weight scales: per-channel | per-tensor.")] = None,
    prune_channels: Annotated[
        float | None, typer.Option(help="Share of each convolution's output channels to remove (stage channels).")
    ] = None,
    channel_criterion: Annotated[str | None, typer.Option(help="Channel ranking: l1 | l2 | bn.")] = None,
    fit: Annotated[
        str | None,
        typer.Option(help="Device profile: channel share and input size that fit it (MCU: flash, arena; Linux: size, p50, RAM)."),
    ] = None,
    distribute: Annotated[str | None, typer.Option(help="auto | none | mirrored (all local GPUs).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Redo a finished stage.")] = False,
    trust_run: TrustOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Prune weights or channels and/or quantization-aware train a fine-tuned run (stages prune, channels, qat, pqat, cqat)."""
    flags = {
        "optimize.prune": prune,
        "optimize.structured": structured or None,
        "optimize.prune_layers": prune_layers,
        "optimize.qat": qat or None,
        "optimize.epochs": epochs,
        "optimize.lr": lr,
        "optimize.qat_lr": qat_lr,
        "optimize.qat_from": qat_from,
        "optimize.skip_unsupported": skip_unsupported or None,
        "optimize.limit_per_class": limit_per_class,
        "optimize.granularity": granularity,
        "optimize.prune_channels": prune_channels,
        "optimize.channel_criterion": channel_criterion,
        "optimize.fit": fit,
        "optimize.distribute": distribute,
    }
    opt = stage_config(run, config, flags, set_).optimize
    import_tensorflow()
    from edgecls.optimize import run_optimize

    for entry in run_optimize(run, opt, force=force, trust=trust_run):
        for line in entry["warnings"]:
            warn(line)
        _print_metrics(f"optimize: {run}", entry["metrics"])


@command
def export(
    run: Annotated[Path, typer.Argument(help="A run folder.")],
    int8: Annotated[bool, typer.Option("--int8", help="int8 TFLite and ONNX plus their fp32 references.")] = False,
    format_: Annotated[str | None, typer.Option("--format", help="Comma list of tflite, onnx.")] = None,
    precision: Annotated[str | None, typer.Option(help="Comma list of fp32, fp16, dynamic, int8.")] = None,
    io: Annotated[str | None, typer.Option(help="int8 TFLite input/output type: int8 | uint8 | float.")] = None,
    stage: Annotated[str | None, typer.Option(help="A run stage (default: the most optimized).")] = None,
    calibration: Annotated[str | None, typer.Option(help="A calibration manifest (edgecls calibrate).")] = None,
    calibration_samples: Annotated[int | None, typer.Option(help="Images when building one.")] = None,
    calibration_method: Annotated[str | None, typer.Option(help="ONNX: minmax | entropy | percentile.")] = None,
    granularity: Annotated[
        str | None, typer.Option(help="int8 weight scales: auto | per-channel | per-tensor (QAT stages: their own).")
    ] = None,
    strip_strings: Annotated[
        bool, typer.Option("--strip-strings", help="TFLite: drop tensor names and signatures (smaller flash).")
    ] = False,
    inspect: Annotated[
        bool, typer.Option("--inspect", help="Per-layer int8 error report (quant_debug.*), as `edgecls inspect`.")
    ] = False,
    fallback: Annotated[
        str | None, typer.Option(help="int8: auto keeps the worst layers float while the drop exceeds --max-int8-drop.")
    ] = None,
    max_int8_drop: Annotated[float | None, typer.Option(help="Accuracy points int8 may lose (validation).")] = None,
    max_float_layers: Annotated[int | None, typer.Option(help="Layers --fallback auto may keep in float.")] = None,
    float_layers: Annotated[str | None, typer.Option(help="Comma list of Keras layers to keep in float.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier export of the stage.")] = False,
    trust_run: TrustOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Export a run stage to TFLite and ONNX (int8 calibrated on one shared set) with a check table."""
    flags = {
        "export.formats": format_,
        "export.precisions": "fp32,int8" if int8 and precision is None else precision,
        "export.io": io,
        "export.stage": stage,
        "export.calibration": calibration,
        "export.calibration_samples": calibration_samples,
        "export.calibration_method": calibration_method,
        "export.granularity": granularity,
        "export.strip_strings": strip_strings or None,
        "export.inspect": inspect or None,
        "export.fallback": fallback,
        "export.max_int8_drop": max_int8_drop,
        "export.max_float_layers": max_float_layers,
        "export.float_layers": float_layers,
    }
    cfg = stage_config(run, config, flags, set_).export
    import_tensorflow()
    from edgecls.export import run_export

    entry = run_export(run, cfg, force=force, trust=trust_run)
    summary = entry["metrics"]
    table = Table(title=f"export: {run}/export/{summary['stage']} (int8 weights {summary['granularity']})")
    for column in ("file", "precision", "from", "bytes", "I/O", "check acc", "Keras acc", "agreement", "sha256"):
        table.add_column(column)
    for row in entry["metrics"]["artifacts"]:
        io_types = f"{row.get('input_dtype', 'float32')}/{row.get('output_dtype', 'float32')}"
        table.add_row(
            row["file"], row["precision"], row["source_stage"], f"{row['bytes']:,}", io_types,
            f"{row['check_accuracy']:.4f}", f"{row['keras_check_accuracy']:.4f}", f"{row['check_agreement']:.4f}",
            row["sha256"][:12],
        )  # fmt: skip
    out.print(table)
    for row in entry["metrics"]["artifacts"]:
        _print_fallback(row)
    for line in entry["warnings"]:
        warn(line)


def _print_fallback(row: dict[str, Any]) -> None:
    fallback = row.get("fallback")
    if not fallback:
        return
    layers = ", ".join(fallback["float_layers"]) or "none"
    verdict = "within" if fallback["met"] else "NOT within"
    out.print(
        f"{row['file']}: float layers {layers}; validation accuracy float {fallback['float_accuracy']:.4f}, "
        f"all-int8 {fallback['int8_accuracy']:.4f}, now {fallback['accuracy']:.4f} "
        f"({verdict} {fallback['tolerance_pp']:g} points)"
    )
    if fallback["float_layers"]:
        warn(f"{row['file']} keeps layers in float: not deployable to TFLite Micro int8-only targets; QAT keeps all int8.")


@command
def inspect(
    run: Annotated[Path, typer.Argument(help="A run folder with an int8 export.")],
    stage: Annotated[str | None, typer.Option(help="Exported stage (default: most optimized).")] = None,
    trust_run: TrustOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Per-layer int8 error of a stage's TFLite and ONNX files, worst first (quant_debug.json/.md/.png)."""
    cfg = stage_config(run, config, {"export.stage": stage}, set_).export
    import_tensorflow()
    from edgecls.export.inspect import run_inspect

    entry = run_inspect(run, cfg, trust=trust_run)
    report = entry["metrics"]
    for fmt, rows in report["layers"].items():
        table = Table(title=f"inspect: {run}/export/{report['stage']} {fmt} ({report['granularity']} weights), worst first")
        for column in ("Keras layer", "op", "SQNR dB", "RMSE/scale", "scale", "agreement", "outlier"):
            table.add_column(column)
        for row in rows[:8]:
            table.add_row(
                row["layer"], row["op"], f"{row['sqnr_db']:.1f}", f"{row['rmse_over_scale']:.2f}", f"{row['scale']:.4g}",
                f"{row['agreement']:.4f}", "yes" if row["outlier"] else "",
            )  # fmt: skip
        out.print(table)


@command
def calibrate(
    data: Annotated[str | None, typer.Option(help="An image folder or archive (its train split is used).")] = None,
    samples: Annotated[int | None, typer.Option(help="Training images, spread evenly over the classes.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the selection.")] = None,
    input_size: Annotated[int | None, typer.Option(help="Side the pixels are decoded and hashed at.")] = None,
    output: Annotated[Path | None, typer.Option(help="Manifest path (default calibration/<name>.json).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Build a reproducible calibration manifest (ids and pixel hashes of training images).

    Reads `data.source`, `model.input_size`, `export.calibration_samples` and `export.calibration_seed`.
    """
    flags = {
        "data.source": data,
        "model.input_size": input_size,
        "export.calibration_samples": samples,
        "export.calibration_seed": seed,
    }
    cfg = load_cli_config(config, flags, set_, {"export.calibration_samples": "--samples", "export.calibration_seed": "--seed"})
    if cfg.data.source == "cifar10" and data is None and config is None:
        raise ConfigError("`--data` must name an image folder or archive (or `cifar10`); it is required here.")
    samples, seed, input_size = cfg.export.calibration_samples, cfg.export.calibration_seed, cfg.model.input_size
    import_tensorflow()
    from edgecls.calibration import build_calibration
    from edgecls.run import atomic_write_json, check_writable

    stem = Path(cfg.data.source).name.split(".")[0] or "data"
    output = output or Path("calibration") / f"{stem}_{samples}_{input_size}px_seed{seed}.json"
    if output.is_dir():
        raise ConfigError(f"`--output` must be a file path for the manifest; {output} is a folder.")
    check_writable(output.parent, "choose another `--output`")
    manifest = build_calibration(cfg.data.source, samples=samples, seed=seed, input_size=input_size)
    atomic_write_json(output, manifest)
    out.print(f"{output}: {manifest['samples']} images, pixels sha256 {manifest['pixels_sha256'][:16]}…")


@command
def firmware(
    run: Annotated[Path, typer.Argument(help="A run folder with an int8 export.")],
    stage: Annotated[str | None, typer.Option(help="Export to use: finetune | prune | channels | qat | pqat | cqat.")] = None,
    model: Annotated[Path | None, typer.Option(help="Another .tflite file instead of the run's export.")] = None,
    namespace: Annotated[str | None, typer.Option(help="C++ namespace of the symbols; `none` for none.")] = None,
    prefix: Annotated[str | None, typer.Option(help="Prefix of the generated symbols, e.g. g_.")] = None,
    arena_margin: Annotated[float | None, typer.Option(help="Safety margin on the measured arena.")] = None,
    parity_images: Annotated[int | None, typer.Option(help="Test images compared TFLM vs LiteRT.")] = None,
    device: Annotated[str | None, typer.Option(help="Device profile for flash/RAM budgets.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild existing assets.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """TFLite Micro assets (C array, settings, op resolver) with a measured tensor arena."""
    flags = {
        "firmware.stage": stage,
        "firmware.namespace": namespace,
        "firmware.prefix": prefix,
        "firmware.arena_margin": arena_margin,
        "firmware.parity_images": parity_images,
        "firmware.device": device,
    }
    cfg = stage_config(run, config, flags, set_).firmware
    import_tensorflow()
    from edgecls.firmware import run_firmware

    entry = run_firmware(run, cfg, model=model, force=force)
    metrics = entry["metrics"]
    parity = metrics["parity"]
    summary = {
        "assets": f"{run}/firmware/{metrics['stage']}",
        "flash (model bytes)": metrics["flash_bytes"],
        "arena measured (bytes)": metrics["arena_bytes_measured"],
        "arena with margin (bytes)": metrics["arena_bytes"],
        "ops": ", ".join(metrics["ops"]),
        "TFLM vs LiteRT bit-exact": parity["bit_exact_fraction"],
        "TFLM vs LiteRT top-1 agreement": parity["top1_agreement"],
        "TFLM accuracy": parity["tflm_accuracy"],
    }
    if "device" in metrics:
        budget = metrics["device"]
        summary["device"] = (
            f"{budget['profile']}: flash {'ok' if budget['flash_ok'] else 'OVER'} ({budget['flash_budget']:,}),"
            f" RAM {'ok' if budget['ram_ok'] else 'OVER'} ({budget['ram_budget']:,})"
        )
    _print_metrics("firmware", summary)


@command
def validate(
    run: Annotated[Path, typer.Argument(help="A run folder with exports.")],
    stage: Annotated[str | None, typer.Option(help="Only this export stage.")] = None,
    min_agreement_fp32: Annotated[float | None, typer.Option(help="Gate: fp32 top-1 agreement with Keras.")] = None,
    min_agreement_fp16: Annotated[float | None, typer.Option(help="Gate: fp16 top-1 agreement with Keras.")] = None,
    max_int8_drop: Annotated[float | None, typer.Option(help="Gate: accuracy points int8/dynamic may lose.")] = None,
    tflm_images: Annotated[int | None, typer.Option(help="Test images for the TFLite Micro rows (0: none).")] = None,
    trust_run: TrustOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Every exported file on the full test split vs its Keras model; exit 1 if a row fails the gate."""
    flags = {
        "validate.stage": stage,
        "validate.min_agreement_fp32": min_agreement_fp32,
        "validate.min_agreement_fp16": min_agreement_fp16,
        "validate.max_int8_drop": max_int8_drop,
        "validate.tflm_images": tflm_images,
    }
    cfg = stage_config(run, config, flags, set_).validate
    import_tensorflow()
    from edgecls.validate import markdown, run_validate

    try:
        result = run_validate(run, cfg, trust=trust_run)
    except UnsavedResultsError as exc:
        out.print(markdown(exc.result["rows"]), markup=False, highlight=False)  # computed: show it anyway
        raise
    out.print(markdown(result["rows"]), markup=False, highlight=False)
    failed = [r for r in result["rows"] if r["status"] != "pass"]
    if failed:
        err.print(f"edgecls: validation failed: {len(failed)} of {len(result['rows'])} rows", markup=False)
        raise typer.Exit(1)


@command
def bench(
    run: Annotated[Path, typer.Argument(help="A run folder with exports.")],
    device: Annotated[
        list[str] | None, typer.Option(help="host, or ssh://user@host[:port]; repeat it to measure several in parallel.")
    ] = None,
    fleet: Annotated[str | None, typer.Option(help="Fleet YAML: devices with their profile, Python and key.")] = None,
    profile: Annotated[str | None, typer.Option(help="Device profile whose budgets to check.")] = None,
    windows: Annotated[int | None, typer.Option(help="Timed windows per file (figure: median of windows).")] = None,
    window_seconds: Annotated[float | None, typer.Option(help="Least duration of a window, seconds.")] = None,
    runs: Annotated[int | None, typer.Option(help="Least timed runs of a window.")] = None,
    warmup: Annotated[int | None, typer.Option(help="Untimed runs first.")] = None,
    threads: Annotated[str | None, typer.Option(help="Comma list of thread counts (default 1 and all).")] = None,
    ssh_key: Annotated[str | None, typer.Option(help="Private key for the SSH devices.")] = None,
    known_hosts: Annotated[str | None, typer.Option(help="known_hosts file for the SSH devices.")] = None,
    remote_python: Annotated[str | None, typer.Option(help="Python on the devices.")] = None,
    trust_run: TrustOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Latency, throughput and memory of every exported file on one device or a fleet; exit 1 over a budget."""
    flags = {
        "bench.device": device or None,
        "bench.fleet": fleet,
        "bench.profile": profile,
        "bench.windows": windows,
        "bench.window_seconds": window_seconds,
        "bench.runs": runs,
        "bench.warmup": warmup,
        "bench.threads": threads,
        "bench.ssh_key": ssh_key,
        "bench.known_hosts": known_hosts,
        "bench.remote_python": remote_python,
    }
    cfg = stage_config(run, config, flags, set_).bench
    import_tensorflow()
    from edgecls.bench import markdown, run_bench

    try:
        result = run_bench(run, cfg, trust=trust_run)
    except UnsavedResultsError as exc:
        out.print(markdown(exc.result), markup=False, highlight=False)  # measured: show it anyway
        raise
    out.print(markdown(result), markup=False, highlight=False)
    if not result["passed"]:
        err.print(f"edgecls: bench failed: {_bench_failure(result, cfg.profile)}", markup=False)
        raise typer.Exit(1)


def _bench_failure(result: dict, profile: str | None) -> str:
    """Why a bench did not pass, in a few words: failed devices, unmeasured files, or a budget."""
    if "devices" in result:
        failed = [s for s in result["summary"] if not s["passed"]]
        return f"{len(failed)} of {len(result['summary'])} device(s) failed or over budget: " + ", ".join(s["url"] for s in failed)
    failed = [r for r in result["rows"] if r["status"] != "pass"]
    return f"{len(failed)} file(s) not measured" if failed else f"over budget of profile {profile}"


@command
def report(
    run: Annotated[Path, typer.Argument(help="A run folder with a finished finetune stage.")],
    wrong_images: Annotated[int | None, typer.Option(help="Most confidently wrong test images to show (0: none).")] = None,
    trust_run: TrustOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """report.md and a self-contained report.html with plots, for every stage the run finished."""
    cfg = stage_config(run, config, {"report.wrong_images": wrong_images}, set_).report
    import_tensorflow()
    from edgecls.report import run_report

    entry = run_report(run, cfg, trust=trust_run)
    _print_metrics(f"report: {run}", {"report.html": str(run / "report.html"), "figures": ", ".join(entry["metrics"]["figures"])})


@command
def run_(
    config: Annotated[Path, typer.Argument(help="A YAML config (see configs/).")],
    set_: SetOpt = None,
    trust_run: TrustOpt = False,
    debug: DebugOpt = False,
) -> None:
    """The whole chain from one config: finetune, optimize, export, firmware, validate, bench, report.

    A stage whose config and inputs are unchanged since the last `edgecls run` is skipped; an
    interrupted run continues where it stopped. Exit 1 when a gate or budget failed (after the report).
    """
    cfg = load_cli_config(config, {}, set_)
    import_tensorflow()
    from edgecls.pipeline import pipeline_summary, run_pipeline

    def progress(stage: str, what: str, detail: str) -> None:
        err.print(f"edgecls run: {stage}: {'running' if what == 'run' else what}" + (f" ({detail})" if detail else ""),
                  markup=False, highlight=False)  # fmt: skip

    try:
        result = run_pipeline(cfg, trust=trust_run, progress=progress)
    except KeyboardInterrupt:
        raise StageInterruptedError(f"interrupted; `edgecls run {config}` continues where it stopped.") from None
    _print_metrics(f"edgecls run: {cfg.run_path}", pipeline_summary(result))
    if not result.passed:
        err.print(f"edgecls: run failed: {'; '.join(result.failures)} (see {cfg.run_path / 'report.html'})", markup=False)
        raise typer.Exit(1)


@command
def evaluate(
    run: Annotated[Path, typer.Argument(help="A run folder.")],
    data: Annotated[str | None, typer.Option(help="Another data source with the same classes.")] = None,
    trust_run: TrustOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Re-compute the test metrics of a run's saved model (writes nothing).

    The run's own test split by default; `--data` (or the `data` section of `--config`/`--set`) another source.
    """
    overrides = {"data.source": data, "data.val_fraction": 0.0 if data else None}
    cfg = stage_config(run, config, overrides, set_)
    import_tensorflow()
    from edgecls.metrics import run_evaluate

    metrics = run_evaluate(run, cfg.data if (data or config or set_) else None, trust=trust_run)
    _print_metrics(f"evaluate: {run}", {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))})
    table = Table("class", "accuracy")
    for class_name, accuracy in metrics["per_class_accuracy"].items():
        table.add_row(class_name, f"{accuracy:.4f}")
    out.print(table)


@command
def models(
    input_size: Annotated[int | None, typer.Option(help="Input side for the MAC count (default model.input_size).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """List every backbone: parameters, MACs at an input size, ImageNet weights."""
    input_size = load_cli_config(config, {}, set_).model.input_size if input_size is None else input_size
    if not 32 <= input_size <= 224:
        raise ConfigError(f"`--input-size` must be in [32, 224] pixels; got {input_size}.")
    import_tensorflow()
    from edgecls.models import SPECS, create_model, list_models
    from edgecls.models.stats import model_stats
    from edgecls.models.weights import imagenet_file, keras_cache_dir

    table = Table("model", "alpha", "alpha range", "blocks", "params", f"MACs @{input_size}px", "ImageNet alphas", "cached")
    for name in list_models():
        spec = SPECS[name]
        classifier, _ = create_model(name, input_size=max(input_size, spec.min_input_size), weights="none")
        stats = model_stats(classifier)
        cached = (keras_cache_dir() / imagenet_file(name, spec.default_alpha, 224).fname).exists()
        table.add_row(
            name,
            f"{spec.default_alpha:g}",
            "-".join(f"{a:g}" for a in spec.alpha_range),
            str(spec.num_blocks),
            f"{stats['params'] / 1e6:.2f} M",
            f"{stats['macs'] / 1e6:.1f} M",
            ", ".join(f"{a:g}" for a in spec.imagenet_alphas),
            "yes" if cached else "no",
        )
    out.print(table)
    out.print(f"Weights cache: {keras_cache_dir()} (10-class head; `cached` is for the default alpha at 224 px)")


def _print_metrics(title: str, metrics: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False)
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    out.print(table)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and map errors to one stderr line and an exit status."""
    click_command = typer.main.get_command(app)
    try:
        status = click_command.main(args=argv, prog_name="edgecls", standalone_mode=False)
    except StageInterruptedError as exc:
        err.print(f"edgecls: {exc}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code
    except EdgeclsError as exc:
        if is_debug():
            raise
        err.print(f"edgecls: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code
    except typer.Abort:
        err.print("edgecls: interrupted", markup=False)
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:
        err.print(f"edgecls: error: {exc.format_message()}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("edgecls: interrupted; continue with `--resume`", markup=False)
        return 130
    return status if isinstance(status, int) else 0  # typer.Exit(n) comes back as n


def entry() -> None:
    """Console-script wrapper around `main`."""
    sys.exit(main())
