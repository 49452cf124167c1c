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
from edgecls.records import optimize_record
from edgecls.run import FinetuneRecord, RunDir, atomic_write_json, atomic_write_text, sha256_file, staged_folder

QAT_STAGES = ("qat", "pqat")
STAGE_ORDER = ("pqat", "qat", "prune", "finetune")
UNSUPPORTED = {("onnx", "fp16"), ("onnx", "dynamic")}


def choose_stage(run: RunDir, requested: str | None) -> str:
    """`requested`, or the most optimized stage that finished."""
    if requested is not None:
        run.require_stage(requested)
        return requested
    run.require_stage("finetune")
    return next(stage for stage in STAGE_ORDER if run.stage(stage) is not None)


def _float_parent(run: RunDir, stage: str) -> str:
    return optimize_record(run, stage).parent if stage in QAT_STAGES else stage


def _metadata(record: FinetuneRecord, precision: str, source_stage: str) -> dict[str, Any]:
    from edgecls.preprocessing import describe

    normalization = describe(record.preprocessing)
    return {
        "labels": list(record.class_names),
        "input_size": record.input_size,
        "input_layout": "NHWC RGB, pixel values 0-255 before normalization",
        "normalization": normalization,
        "backbone": record.backbone,
        "alpha": record.alpha,
        "precision": precision,
        "source_stage": source_stage,
        "edgecls_version": __version__,
    }


def _calibration(run: RunDir, cfg: ExportConfig, record: FinetuneRecord) -> tuple[np.ndarray, dict[str, Any]]:
    from edgecls.calibration import build_calibration, load_calibration, read_manifest

    size, source = record.input_size, record.data_config["source"]
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
        fp32 = folder / f".{name}.fp32.onnx"
        fp32.write_bytes(proto.SerializeToString())
        onnx_export.quantize(fp32, folder / name, calibration, cfg.calibration_method, per_tensor=per_tensor)
        fp32.unlink()
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
    size, mode = record.input_size, record.preprocessing
    qat = stage in QAT_STAGES
    granularity = resolve_granularity(run, stage, cfg.granularity)
    plan = _plan(cfg)
    models = {stage: run.load_model(stage, trust=trust)[0]}
    parent = _float_parent(run, stage)
    if qat and any(p != "int8" for _, p in plan):
        models[parent] = run.load_model(parent, trust=trust)[0]
    needs_calibration = any(p == "int8" for _, p in plan) and not qat  # QAT int8 keeps its learned ranges
    calibration, manifest = _calibration(run, cfg, record) if needs_calibration else (None, None)
    calibration_float = None if calibration is None else preprocess_numpy(calibration, mode)

    def representative():
        for image in calibration_float:
            yield [image[None]]

    check, class_names = load_split(record.data(test_limit_per_class=cfg.check_per_class), size, record.seed, "test")
    check_images = preprocess_numpy(check.images, mode)

    final = run.file(f"export/{stage}")
    with staged_folder(final) as tmp:
        rows = []
        references = {}  # Keras scores on the check set, once per source model
        for fmt, precision in plan:
            source_stage = stage if (precision == "int8" or not qat) else parent
            model = models[source_stage]
            meta = _metadata(record, precision, source_stage)
            fake_quant = qat and source_stage == stage
            name = _export_one(
                fmt, precision, model, fake_quant, tmp, cfg, representative, calibration_float, meta, size,
                per_tensor=granularity == "per-tensor",
            )  # fmt: skip
            if source_stage not in references:
                references[source_stage] = predict_scores(model, check.images, mode=mode, batch_size=128)
            reference = references[source_stage]
            row = {"file": name, "format": fmt, "precision": precision, "source_stage": source_stage}
            row["bytes"] = (tmp / name).stat().st_size
            row["sha256"] = sha256_file(tmp / name)
            row["keras_check_accuracy"] = float(np.mean(reference.argmax(1) == check.labels))
            row.update(_check(tmp, name, fmt, check_images, check.labels, reference))
            rows.append(row)
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
        metrics=summary, warnings=[],
    )  # fmt: skip


def _plain(cfg: ExportConfig) -> dict[str, Any]:
    import dataclasses

    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
