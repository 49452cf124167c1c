"""`edgecls export`, `inspect`, `calibrate` and `firmware`: from a trained model to deployable files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgecls.cli.common import (
    ConfigOpt,
    DebugOpt,
    SetOpt,
    TrustOpt,
    command,
    import_tensorflow,
    load_cli_config,
    out,
    print_metrics,
    stage_config,
    warn,
)
from edgecls.errors import ConfigError


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
    print_metrics("firmware", summary)
