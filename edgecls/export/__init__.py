"""The export stage: deployable TFLite and ONNX files from any run stage, and how they differ.

`run_export(run, cfg.export)` writes `runs/<name>/export/<stage>/`:

    model_<precision>.tflite / .onnx   each with labels, input size and normalization embedded
    labels.txt                         one class name per line
    calibration.json                   the calibration manifest used by both int8 exporters
    export.json                        per file: format, precision, bytes, sha256, I/O types,
                                       int8 weight sparsity, quick-check accuracy vs Keras

Files are written to a temporary folder renamed into place at the end, so a
failed export leaves no partial file. For a QAT stage the int8 files keep the
learned ranges (no calibration); its float files are converted from the
parent stage's float model and say so (`source_stage`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecls import __version__
from edgecls.config import ExportConfig
from edgecls.console import quiet_native
from edgecls.errors import ConfigError, RunError
from edgecls.models.resize import input_size_of
from edgecls.records import optimize_record
from edgecls.run import FinetuneRecord, RunDir, atomic_write_json, atomic_write_text, sha256_file, staged_folder

QAT_STAGES = ("qat", "pqat", "cqat")
STAGE_ORDER = ("cqat", "pqat", "qat", "channels", "prune", "finetune")
UNSUPPORTED = {("onnx", "fp16"), ("onnx", "dynamic")}
FP32_ONNX_SCRATCH = ".fp32-for-int8.onnx"


def choose_stage(run: RunDir, requested: str | None) -> str:
    """`requested`, or the most optimized stage that finished."""
    if requested is not None:
        run.require_stage(requested)
        return requested
    run.require_stage("finetune")
    return next(stage for stage in STAGE_ORDER if run.stage(stage) is not None)


def choose_exported_stage(run: RunDir, requested: str | None) -> str:
    """`requested` if it was exported, else the most optimized stage that was."""
    if requested is not None:
        run.require_stage(f"export/{requested}")
        return requested
    run.require_stage("finetune")
    exported = [stage for stage in STAGE_ORDER if run.stage(f"export/{stage}") is not None]
    if not exported:
        raise RunError(f"run {run.path} has nothing exported: run `edgecls export {run.path} --int8` first.")
    return exported[0]


def validation_sample(record: FinetuneRecord, per_class: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """At most `per_class` validation images a class (uint8) and their labels: what the int8 drop is measured on.

    Raises:
        DataError: the run has no validation split (`data.val_fraction` 0).
    """
    from edgecls.data import load_split
    from edgecls.errors import DataError

    split, _ = load_split(record.data(), size, record.seed, "val")
    if len(split) == 0:
        raise DataError("the int8 fallback measures accuracy on the validation split, and this run has none "
                        "(data.val_fraction 0); fine-tune with a validation split.")  # fmt: skip
    chosen = np.concatenate([np.flatnonzero(split.labels == label)[:per_class] for label in np.unique(split.labels)])
    return split.images[np.sort(chosen)], split.labels[np.sort(chosen)]


def int8_context(run: RunDir, stage: str, cfg: ExportConfig, scratch: Path, *, trust: bool = False):
    """The `Int8Debug` that ranks an exported stage's layers (its own calibration set and granularity), and that granularity."""
    from edgecls.calibration import load_calibration, read_manifest
    from edgecls.data.pipeline import preprocess_numpy
    from edgecls.export import onnx as onnx_export
    from edgecls.export.inspect import Int8Debug

    record = run.finetune_record()
    summary = run.require_stage(f"export/{stage}").get("metrics", {})
    granularity = summary.get("granularity") if isinstance(summary, dict) else None
    if granularity not in ("per-channel", "per-tensor"):
        raise RunError(f"the `export/{stage}` entry of {run.manifest_path} is not shaped as edgecls writes it.")
    manifest_path = run.inside(f"export/{stage}/calibration.json")
    model = run.load_model(stage, trust=trust)[0]
    calibration = load_calibration(read_manifest(manifest_path), input_size=input_size_of(model))
    fp32 = scratch / "model_fp32.onnx"
    fp32.write_bytes(onnx_export.convert(model, input_size_of(model)).SerializeToString())
    ctx = Int8Debug(  # ranking only: no validation images (a run without a validation split can be inspected)
        model=model, calibration=preprocess_numpy(calibration, record.preprocessing), per_tensor=granularity == "per-tensor",
        fp32_onnx=fp32, val_images=np.zeros((0,)), val_labels=np.zeros((0,)),
        io=cfg.io, calibration_method=cfg.calibration_method,
    )  # fmt: skip
    return ctx, granularity


def _float_parent(run: RunDir, stage: str) -> str:
    return optimize_record(run, stage).parent if stage in QAT_STAGES else stage


def _metadata(record: FinetuneRecord, precision: str, source_stage: str, size: int) -> dict[str, Any]:
    from edgecls.preprocessing import describe

    normalization = describe(record.preprocessing)
    return {
        "labels": list(record.class_names),
        "input_size": size,
        "input_layout": "NHWC RGB, pixel values 0-255 before normalization",
        "normalization": normalization,
        "backbone": record.backbone,
        "alpha": record.alpha,
        "precision": precision,
        "source_stage": source_stage,
        "edgecls_version": __version__,
    }


def _calibration(cfg: ExportConfig, record: FinetuneRecord, size: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The calibration images at the exported model's input `size`: `cfg.calibration`'s set, else a fresh one."""
    from edgecls.calibration import build_calibration, load_calibration, read_manifest

    source = record.data_config["source"]
    if cfg.calibration is not None:
        manifest = read_manifest(cfg.calibration)
        fallback = source if not Path(manifest["source"]).exists() else None
        return load_calibration(manifest, source=fallback, input_size=size), manifest
    manifest = build_calibration(
        source, samples=cfg.calibration_samples, seed=cfg.calibration_seed, input_size=size, flag="--calibration-samples"
    )
    return load_calibration(manifest, input_size=size), manifest


def resolve_granularity(run: RunDir, stage: str, requested: str) -> str:
    """The int8 weight granularity of `stage`'s export: a QAT stage's own, else `requested` (auto: per-channel).

    Raises:
        ConfigError: `requested` contradicts the granularity a QAT stage was trained with.
    """
    if stage not in QAT_STAGES:
        return "per-channel" if requested == "auto" else requested
    trained = optimize_record(run, stage).granularity
    if requested not in ("auto", trained):
        raise ConfigError(
            f"stage `{stage}` was quantization-aware trained with {trained} weights, so its int8 files are {trained}; "
            f"pass `--granularity {trained}` or redo `edgecls optimize --qat --granularity {requested} --force`."
        )
    return trained


def _plan(cfg: ExportConfig) -> list[tuple[str, str]]:
    return [(f, p) for f in cfg.formats for p in cfg.precisions if (f, p) not in UNSUPPORTED]


def _export_one(fmt, precision, model, qat, folder, cfg, representative, calibration, meta, size, per_tensor):
    """Write one artifact into `folder`; returns its file name."""
    from edgecls.export import onnx as onnx_export
    from edgecls.export import tflite

    name = f"model_{precision}.{fmt}"
    if fmt == "tflite":
        flatbuffer = tflite.convert(
            model,
            precision,
            io=cfg.io,
            representative=representative,
            quantization_aware=qat and precision == "int8",
            per_tensor=per_tensor,
        )
        if cfg.strip_strings:
            flatbuffer = tflite.strip_strings(flatbuffer)
        (folder / name).write_bytes(tflite.add_metadata(flatbuffer, meta))
        return name
    if precision == "int8" and qat:
        proto = onnx_export.from_tflite(tflite.convert(model, "int8", io="float", quantization_aware=True))
        (folder / name).write_bytes(onnx_export.add_metadata(proto, meta).SerializeToString())
        return name
    proto = onnx_export.convert(model, size)
    if precision == "int8":
        fp32 = folder / FP32_ONNX_SCRATCH  # kept for the int8 debugger; removed before the folder is final
        fp32.write_bytes(proto.SerializeToString())
        onnx_export.quantize(fp32, folder / name, calibration, cfg.calibration_method, per_tensor=per_tensor)
        import onnx

        proto = onnx.load(str(folder / name))
    (folder / name).write_bytes(onnx_export.add_metadata(proto, meta).SerializeToString())
    return name


def _check(folder: Path, name: str, fmt: str, images: np.ndarray, labels: np.ndarray, reference: np.ndarray):
    from edgecls.export import onnx as onnx_export
    from edgecls.export import tflite
    from edgecls.runtimes import open_runner, predict

    path = folder / name
    with quiet_native():
        scores = predict(open_runner(path), images)
    details = tflite.describe(path.read_bytes()) if fmt == "tflite" else onnx_export.describe(path)
    return {
        "check_accuracy": float(np.mean(scores.argmax(1) == labels)),
        "check_agreement": float(np.mean(scores.argmax(1) == reference.argmax(1))),
        "check_max_abs_error": float(np.max(np.abs(scores - reference))),
        **details,
    }


def run_export(run_path: str | Path, cfg: ExportConfig, *, force: bool = False, trust: bool = False) -> dict[str, Any]:
    """Export a run stage to TFLite and ONNX files and check them against Keras.

    Args:
        run_path: A run folder with a finished `finetune` stage.
        cfg: What to export (`ExportConfig`).
        force: Replace an earlier export of the same stage.
        trust: Load models with Lambda layers (`--trust-run`); hashes are checked anyway.

    Returns:
        The manifest entry; `entry["metrics"]["artifacts"]` holds the table rows.

    Raises:
        RunError: no such stage, or an earlier export without `force`.
        DataError: a calibration manifest that no longer matches its images or the model.
        ConversionError: a converter failed (the message names the op).
    """
    from edgecls.data import load_split
    from edgecls.data.pipeline import preprocess_numpy
    from edgecls.metrics import predict_scores

    run = RunDir(run_path)
    stage = choose_stage(run, cfg.stage)
    key = f"export/{stage}"
    if run.stage(key) is not None and not force:
        raise RunError(f"run {run.path} already exported `{stage}`; pass `--force` to export it again.")
    record = run.finetune_record()
    mode = record.preprocessing
    qat = stage in QAT_STAGES
    granularity = resolve_granularity(run, stage, cfg.granularity)
    plan = _plan(cfg)
    models = {stage: run.load_model(stage, trust=trust)[0]}
    size = input_size_of(models[stage])  # a stage of `--fit` may take another size than the fine-tuned model
    parent = _float_parent(run, stage)
    if qat and any(p != "int8" for _, p in plan):
        models[parent] = run.load_model(parent, trust=trust)[0]
    needs_calibration = any(p == "int8" for _, p in plan) and not qat  # QAT int8 keeps its learned ranges
    calibration, manifest = _calibration(cfg, record, size) if needs_calibration else (None, None)
    calibration_float = None if calibration is None else preprocess_numpy(calibration, mode)

    def representative():
        for image in calibration_float:
            yield [image[None]]

    check, class_names = load_split(record.data(test_limit_per_class=cfg.check_per_class), size, record.seed, "test")
    check_images = preprocess_numpy(check.images, mode)

    repair = not qat and bool(cfg.fallback == "auto" or cfg.float_layers or cfg.inspect)
    warnings = (
        [f"--inspect skipped: stage `{stage}` learned its int8 ranges in training (no calibration to debug)"]
        if (qat and cfg.inspect)
        else []
    )
    if qat and (cfg.fallback == "auto" or cfg.float_layers):
        raise ConfigError(
            f"stage `{stage}` is quantization-aware trained: its int8 files keep every layer int8 with learned ranges; "
            "the float fallback (--fallback, --float-layers) applies to post-training int8 of a float stage."
        )
    final = run.file(f"export/{stage}")
    with staged_folder(final) as tmp:
        rows = []
        references = {}  # Keras scores on the check set, once per source model
        debugging = _Int8Repair(cfg, tmp) if repair else None
        for fmt, precision in plan:
            source_stage = stage if (precision == "int8" or not qat) else parent
            model = models[source_stage]
            meta = _metadata(record, precision, source_stage, size)
            fake_quant = qat and source_stage == stage
            name = _export_one(
                fmt, precision, model, fake_quant, tmp, cfg, representative, calibration_float, meta, size,
                per_tensor=granularity == "per-tensor",
            )  # fmt: skip
            if debugging is not None and precision == "int8":
                debugging.ctx = debugging.ctx or _int8_debug(record, model, calibration_float, granularity, cfg, tmp)
                debugging.repair(fmt, tmp / name, meta)
            if source_stage not in references:
                references[source_stage] = predict_scores(model, check.images, mode=mode, batch_size=128)
            reference = references[source_stage]
            row = {"file": name, "format": fmt, "precision": precision, "source_stage": source_stage}
            row["bytes"] = (tmp / name).stat().st_size
            row["sha256"] = sha256_file(tmp / name)
            row["keras_check_accuracy"] = float(np.mean(reference.argmax(1) == check.labels))
            row.update(_check(tmp, name, fmt, check_images, check.labels, reference))
            rows.append(row)
        if debugging is not None:
            debugging.write(stage, granularity, rows)
        (tmp / FP32_ONNX_SCRATCH).unlink(missing_ok=True)
        atomic_write_text(tmp / "labels.txt", "\n".join(class_names) + "\n")
        if manifest is not None:
            atomic_write_json(tmp / "calibration.json", manifest)
        summary = {
            "stage": stage,
            "check_images": int(len(check)),
            "calibration": None
            if manifest is None
            else {
                "manifest": cfg.calibration or f"export/{stage}/calibration.json",
                "samples": manifest["samples"],
                "pixels_sha256": manifest["pixels_sha256"],
                "method_onnx": cfg.calibration_method,
            },
            "int8_io": cfg.io,
            "granularity": granularity,
            "strip_strings": cfg.strip_strings,
            "artifacts": rows,
        }
        atomic_write_json(tmp / "export.json", summary)
    outputs = sorted(str(p.relative_to(run.path)) for p in final.iterdir())
    return run.record_stage(
        key, seed=record.seed, inputs={"stage": stage, "stage_sha256": run.model_sha256(stage), "export_config": _plain(cfg)},
        outputs=outputs,
        metrics=summary, warnings=warnings,
    )  # fmt: skip


def _int8_debug(record: FinetuneRecord, model, calibration: np.ndarray, granularity: str, cfg: ExportConfig, folder: Path):
    from edgecls.data.pipeline import preprocess_numpy
    from edgecls.export.inspect import Int8Debug

    fixing = cfg.fallback == "auto" or bool(cfg.float_layers)
    images, labels = (validation_sample(record, cfg.fallback_per_class, input_size_of(model)) if fixing
                      else (np.zeros((0,)), np.zeros((0,))))  # fmt: skip
    return Int8Debug(
        model=model, calibration=calibration, per_tensor=granularity == "per-tensor", fp32_onnx=folder / FP32_ONNX_SCRATCH,
        val_images=preprocess_numpy(images, record.preprocessing) if fixing else images, val_labels=labels,
        io=cfg.io, calibration_method=cfg.calibration_method,
    )  # fmt: skip


class _Int8Repair:
    """The `--inspect` / `--fallback` / `--float-layers` part of one export: rankings, fallbacks, the report."""

    def __init__(self, cfg: ExportConfig, folder: Path):
        self.cfg, self.folder = cfg, folder
        self.ctx = None
        self.rankings: dict[str, list] = {}
        self.fallbacks: dict[str, Any] = {}

    def repair(self, fmt: str, path: Path, meta: dict[str, Any]) -> None:
        """Rank the layers of the int8 file at `path`; with a fallback, maybe rewrite it (metadata restored)."""
        from edgecls.export import onnx as onnx_export
        from edgecls.export import tflite
        from edgecls.export.inspect import fall_back

        self.rankings[fmt] = self.ctx.ranking(fmt, path)
        if not (self.cfg.fallback == "auto" or self.cfg.float_layers):
            return
        self.fallbacks[fmt] = fallback = fall_back(self.ctx, fmt, path, self.cfg, self.rankings[fmt])
        if not fallback.float_layers:
            return
        meta = {**meta, "float_layers": list(fallback.float_layers)}
        if fmt == "tflite":
            flatbuffer = path.read_bytes()
            if self.cfg.strip_strings:
                flatbuffer = tflite.strip_strings(flatbuffer)
            path.write_bytes(tflite.add_metadata(flatbuffer, meta))
        else:
            import onnx

            path.write_bytes(onnx_export.add_metadata(onnx.load(str(path)), meta).SerializeToString())

    def write(self, stage: str, granularity: str, rows: list[dict[str, Any]]) -> None:
        """Add each int8 row's fallback, and write quant_debug.* beside the files."""
        from edgecls.export.inspect import report_dict, write_report

        for row in rows:
            fallback = self.fallbacks.get(row["format"]) if row["precision"] == "int8" else None
            if fallback is not None:
                row["float_layers"] = list(fallback.float_layers)
                row["fallback"] = fallback.as_dict()
        report = report_dict(stage, granularity, len(self.ctx.calibration), self.rankings)
        report["fallback"] = {fmt: fallback.as_dict() for fmt, fallback in self.fallbacks.items()}
        write_report(self.folder, report)


def _plain(cfg: ExportConfig) -> dict[str, Any]:
    import dataclasses

    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
