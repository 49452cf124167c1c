"""Inspect and repair post-training int8: the per-layer report and the float fallback of one export.

`Int8Debug` holds what both need for one stage: the float Keras model, its
calibration images, the weight granularity, the fp32 ONNX file, and a sample of
the validation split to measure accuracy on. `inspect_files` ranks the layers
of the int8 files (`quant_debug.json`, `.md`, `.png`); `fall_back` rewrites an
int8 file with its worst layers in float when its validation drop exceeds the
tolerance (`edgecls export --fallback auto`), or with the layers a user named
(`--float-layers`). `run_inspect` is `edgecls inspect RUN`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.config import ExportConfig
from edgecls.console import quiet_native
from edgecls.errors import ConfigError, IntegrityError, RunError
from edgecls.escape import escape_markdown
from edgecls.export import debug
from edgecls.export.fallback import Fallback, search, within
from edgecls.run import RunDir, atomic_write_bytes, atomic_write_json, atomic_write_text
from edgecls.runtimes import LatencyMethod, isolated_latency

QUANT_DEBUG = "quant_debug"
SHOWN_LAYERS = 12


@dataclass
class Int8Debug:
    """Everything the debuggers and the fallback need for one stage's post-training int8 files.

    Attributes:
        model: The float Keras model the int8 files were quantized from.
        calibration: Preprocessed calibration images (float32, NHWC).
        per_tensor: Whether int8 weights have one scale per tensor.
        fp32_onnx: The fp32 ONNX file of the model.
        val_images: Preprocessed validation images that measure the drop.
        val_labels: Their labels.
        io: The int8 TFLite input/output type.
        calibration_method: ONNX Runtime's calibration method.
    """

    model: Any
    calibration: np.ndarray
    per_tensor: bool
    fp32_onnx: Path
    val_images: np.ndarray
    val_labels: np.ndarray
    io: str = "int8"
    calibration_method: str = "minmax"
    _debugger: Any = field(default=None, repr=False)
    _float_accuracy: float | None = field(default=None, repr=False)

    def representative(self):
        for image in self.calibration:
            yield [image[None]]

    def debugger(self):
        """The TFLite `QuantizationDebugger`, built and run once."""
        if self._debugger is None:
            self._debugger = debug.tflite_debugger(self.model, self.representative, per_tensor=self.per_tensor)
        return self._debugger

    def ranking(self, fmt: str, int8_file: Path) -> list[debug.LayerError]:
        if fmt == "tflite":
            return debug.tflite_layer_errors(self.debugger(), self.model)
        return debug.onnx_layer_errors(self.fp32_onnx, int8_file, self.calibration[:32], self.model)

    def float_accuracy(self) -> float:
        if self._float_accuracy is None:
            scores = self.model.predict(self.val_images, batch_size=128, verbose=0)
            self._float_accuracy = float(np.mean(scores.argmax(1) == self.val_labels))
        return self._float_accuracy

    def accuracy(self, path: Path) -> float:
        from edgecls.runtimes import open_runner, predict

        with quiet_native():
            scores = predict(open_runner(path), self.val_images)
        return float(np.mean(scores.argmax(1) == self.val_labels))

    def build(self, fmt: str, nodes: list[str], folder: Path) -> Path:
        """A new int8 file of `fmt` in `folder` with `nodes` (runtime names) kept in float."""
        from edgecls.export import onnx as onnx_export

        handle, name = tempfile.mkstemp(suffix=f".{fmt}", dir=folder, prefix=".fallback-")
        path = Path(name)
        if fmt == "tflite":
            with open(handle, "wb") as file:
                file.write(debug.tflite_with_float_layers(self.debugger(), nodes, self.io))
        else:
            Path(name).unlink()
            onnx_export.quantize(
                self.fp32_onnx, path, self.calibration, self.calibration_method,
                per_tensor=self.per_tensor, nodes_to_exclude=nodes,
            )  # fmt: skip
        return path


def nodes_of(layers: list[str], ranking: list[debug.LayerError], flag: str = "--float-layers") -> list[str]:
    """The runtime names of Keras `layers`; a name the model's int8 layers lack is a `ConfigError`."""
    by_layer = {error.layer: error.node for error in ranking}
    unknown = [name for name in layers if name not in by_layer]
    if unknown:
        known = ", ".join(sorted(by_layer))
        raise ConfigError(f"{flag} names `{unknown[0]}`, which is not a quantized layer of this model (it has: {known}).")
    return [by_layer[name] for name in layers]


def fall_back(ctx: Int8Debug, fmt: str, path: Path, cfg: ExportConfig, ranking: list[debug.LayerError]) -> Fallback:
    """Rewrite the int8 file at `path` with float layers: the user's (`float_layers`) or the search's (`auto`).

    The file is replaced only when a fallback is kept; every candidate measured is in `Fallback.trials`.
    """
    folder = path.parent
    float_accuracy, int8_accuracy = ctx.float_accuracy(), ctx.accuracy(path)
    candidates: list[Path] = []

    def build(nodes: list[str]) -> Path:
        candidates.append(ctx.build(fmt, nodes, folder))
        return candidates[-1]

    try:
        if cfg.float_layers:
            nodes = nodes_of(list(cfg.float_layers), ranking)
            chosen = build(nodes)
            accuracy = ctx.accuracy(chosen)
            result = Fallback(
                cfg.max_int8_drop, float_accuracy, int8_accuracy, accuracy, tuple(cfg.float_layers), tuple(nodes),
                met=within(float_accuracy, accuracy, cfg.max_int8_drop), payload=chosen,
            )  # fmt: skip
        else:
            result = search(
                ranking, build, ctx.accuracy, float_accuracy=float_accuracy, int8_accuracy=int8_accuracy,
                int8_payload=path, tolerance_pp=cfg.max_int8_drop, max_float_layers=cfg.max_float_layers,
            )  # fmt: skip
        if result.payload != path:
            result.cost = {
                "bytes_int8": path.stat().st_size, "bytes": result.payload.stat().st_size,
                "latency_ms_int8": latency_ms(path), "latency_ms": latency_ms(result.payload),
            }  # fmt: skip
            result.payload.replace(path)
    finally:
        for candidate in candidates:
            candidate.unlink(missing_ok=True)
    return result


FALLBACK_LATENCY = LatencyMethod(windows=3, window_seconds=0.5)  # a before/after comparison, not a published figure


def latency_ms(path: Path) -> float:
    """Median single-image inference latency on this host, 1 thread (LiteRT / ONNX Runtime), in a pinned child."""
    return isolated_latency(path, threads=1, method=FALLBACK_LATENCY)["p50_ms"]


# --- the report ---------------------------------------------------------------------------------------


def _table(errors: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| rank | Keras layer | op | SQNR (dB) | RMSE / scale | scale | int8 range | agreement | outlier |",
        "|---:|---|---|---:|---:|---:|---|---:|---|",
    ]
    for index, row in enumerate(errors[:SHOWN_LAYERS], start=1):
        lines.append(
            f"| {index} | {escape_markdown(row['layer'])} | {row['op']} | {row['sqnr_db']:.1f} | "
            f"{row['rmse_over_scale']:.2f} | {row['scale']:.4g} | [{row['low']:.3g}, {row['high']:.3g}] | "
            f"{row['agreement']:.4f} | {'yes' if row['outlier'] else ''} |"
        )
    return lines


def markdown(report: dict[str, Any]) -> str:
    """quant_debug.md: per format, the worst layers and what the fallback did."""
    lines = [
        f"# Per-layer int8 error: stage `{report['stage']}` ({report['granularity']} weights)",
        "",
        f"Each layer compared with its float twin on the same input ({report['images']} calibration images); "
        f"worst first. An outlier has SQNR below {debug.OUTLIER_SQNR_DB:g} dB (noise above 10 % of the signal).",
    ]
    for fmt in ("tflite", "onnx"):
        if fmt not in report["layers"]:
            continue
        errors = report["layers"][fmt]
        outliers = [row["layer"] for row in errors if row["outlier"]]
        verdict = "outliers: " + ", ".join(escape_markdown(n) for n in outliers) if outliers else "no outlier"
        lines += ["", f"## {fmt} ({verdict})", "", *_table(errors)]
        fallback = report.get("fallback", {}).get(fmt)
        if fallback:
            kept = ", ".join(escape_markdown(n) for n in fallback["float_layers"]) or "none"
            lines += [
                "",
                f"Fallback (tolerance {fallback['tolerance_pp']:g} points): float layers {kept}; validation accuracy "
                f"float {fallback['float_accuracy']:.4f}, all-int8 {fallback['int8_accuracy']:.4f}, "
                f"chosen {fallback['accuracy']:.4f} ({'within' if fallback['met'] else 'NOT within'} tolerance).",
            ]
            if fallback["float_layers"]:
                lines.append("A file with float layers is not deployable to TFLite Micro int8-only targets; QAT "
                             "(`edgecls optimize RUN --qat`) keeps every layer int8.")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """quant_debug.png: SQNR per layer (worst at the top), one panel per format, the outlier line dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    formats = [fmt for fmt in ("tflite", "onnx") if fmt in report["layers"]]
    height = max(3.0, 0.25 * max(len(report["layers"][fmt][: SHOWN_LAYERS * 2]) for fmt in formats) + 1)
    figure, axes = plt.subplots(1, len(formats), figsize=(6 * len(formats), height), squeeze=False)
    for axis, fmt in zip(axes[0], formats, strict=True):
        rows = report["layers"][fmt][: SHOWN_LAYERS * 2][::-1]
        colors = ["tab:red" if row["outlier"] else "tab:blue" for row in rows]
        axis.barh([row["layer"] for row in rows], [row["sqnr_db"] for row in rows], color=colors)
        axis.axvline(debug.OUTLIER_SQNR_DB, color="black", linestyle="--", linewidth=1)
        axis.set_xlabel("SQNR of the layer's int8 output (dB, higher is better)")
        axis.set_title(f"{fmt}: {report['granularity']} int8 weights")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(folder: Path, report: dict[str, Any]) -> list[str]:
    """quant_debug.json / .md / .png in `folder`; returns their names."""
    atomic_write_json(folder / f"{QUANT_DEBUG}.json", report)
    atomic_write_text(folder / f"{QUANT_DEBUG}.md", markdown(report))
    with tempfile.NamedTemporaryFile(suffix=".png", dir=folder, delete=False) as handle:
        temporary = Path(handle.name)
    try:
        plot(report, temporary)
        atomic_write_bytes(folder / f"{QUANT_DEBUG}.png", temporary.read_bytes())
    finally:
        temporary.unlink(missing_ok=True)
    return [f"{QUANT_DEBUG}.{suffix}" for suffix in ("json", "md", "png")]


def report_dict(stage: str, granularity: str, images: int, layers: dict[str, list[debug.LayerError]]) -> dict[str, Any]:
    return {
        "stage": stage,
        "granularity": granularity,
        "images": images,
        "outlier_sqnr_db": debug.OUTLIER_SQNR_DB,
        "layers": {fmt: debug.as_rows(errors) for fmt, errors in layers.items()},
        "fallback": {},
    }


def run_inspect(run_path: str | Path, cfg: ExportConfig, *, trust: bool = False) -> dict[str, Any]:
    """`edgecls inspect RUN`: rank the layers of a stage's exported int8 files; writes quant_debug.* beside them.

    Raises:
        RunError: the stage has no int8 export.
        ConfigError: the stage is quantization-aware trained (its ranges are learned, not calibrated).
    """
    from edgecls.export import QAT_STAGES, choose_exported_stage, int8_context
    from edgecls.records import exported_files

    run = RunDir(run_path)
    stage = choose_exported_stage(run, cfg.stage)
    if stage in QAT_STAGES:
        raise ConfigError(
            f"stage `{stage}` is quantization-aware trained: its int8 ranges were learned, not calibrated, so there is "
            "no post-training int8 to inspect; `edgecls validate` measures its drop."
        )
    folder = run.file(f"export/{stage}")
    files = [f for f in exported_files(run, stage) if f.precision == "int8" and f.source_stage == stage]
    for file in files:
        problem = file.problem()
        if problem:
            raise IntegrityError(f"{file.path}: {problem}; re-export it with `edgecls export {run.path} --force`.")
    exported = {file.format: file.path for file in files}
    if not exported:
        raise RunError(f"stage `{stage}` of {run.path} has no int8 export; run `edgecls export {run.path} --int8 --stage {stage}`.")
    with tempfile.TemporaryDirectory() as scratch:
        ctx, granularity = int8_context(run, stage, cfg, Path(scratch), trust=trust)
        layers = {fmt: ctx.ranking(fmt, path) for fmt, path in exported.items()}
    report = report_dict(stage, granularity, len(ctx.calibration), layers)
    outputs = write_report(folder, report)
    return run.record_stage(
        f"inspect/{stage}", seed=run.finetune_record().seed,
        inputs={"stage": stage, "stage_sha256": run.model_sha256(stage)},
        outputs=[f"export/{stage}/{name}" for name in outputs], metrics=report, warnings=[],
    )  # fmt: skip
