"""The validate stage: every exported file on the FULL test split, against its Keras model, with a gate.

`run_validate(run)` evaluates each artifact of every export (or one stage's) on
its runtime — .tflite on LiteRT, .onnx on ONNX Runtime, int8 .tflite also on
TFLite Micro (on a subset: TFLM's reference kernels are slow) — and compares it
with the Keras model it was converted from. Model files are verified before
use and run in a child process, so a corrupt or truncated file becomes a
failing row with its reason, never a crash of edgecls.

Default gate (override with `Gate(...)` or the CLI flags): fp32 agreement with
Keras >= 99.9 %; fp16 agreement >= 99.5 %; dynamic and int8 accuracy at most
1.0 pp below Keras. Writes `validate.json` and `validate.md` in the run folder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.run import RunDir, atomic_write_json, atomic_write_text


@dataclass(frozen=True)
class Gate:
    """Pass/fail thresholds of `edgecls validate`.

    Attributes:
        fp32_min_agreement: Top-1 agreement with Keras an fp32 file needs. Defaults to 0.999.
        fp16_min_agreement: The same for fp16. Defaults to 0.995.
        int8_max_drop_pp: Accuracy a dynamic-range or int8 file may lose, in points. Defaults to 1.0.
    """

    fp32_min_agreement: float = 0.999
    fp16_min_agreement: float = 0.995
    int8_max_drop_pp: float = 1.0

    def judge(self, precision: str, agreement: float, delta_pp: float) -> str | None:
        """None when the row passes, else the reason."""
        if precision in ("fp32", "fp16"):
            need = self.fp32_min_agreement if precision == "fp32" else self.fp16_min_agreement
            if agreement < need:
                return f"agreement {agreement:.4f} < {need}"
            return None
        if -delta_pp > self.int8_max_drop_pp:
            return f"accuracy {delta_pp:+.2f} pp vs Keras, allowed -{self.int8_max_drop_pp}"
        return None


def verify_model_file(path: Path) -> str | None:
    """Cheap structural checks before a runtime touches the file; the reason it is unusable, or None."""
    data = path.read_bytes() if path.exists() else b""
    if not data:
        return "missing or empty file"
    if path.suffix == ".tflite":
        if len(data) < 8 or data[4:8] != b"TFL3":
            return "not a TFLite flatbuffer (no TFL3 identifier)"
        return None
    import onnx

    try:
        onnx.checker.check_model(onnx.load_from_string(data))
    except Exception as exc:  # DecodeError, ValidationError
        return f"not a valid ONNX model ({str(exc).splitlines()[0][:120]})"
    return None


def _row(artifact: dict, runtime: str, scores: np.ndarray | None, labels, reference, keras_acc, gate, reason=None):
    row = {
        "artifact": artifact["file"],
        "stage": artifact["stage"],
        "runtime": runtime,
        "precision": artifact["precision"],
        "bytes": artifact["bytes"],
        "images": int(len(labels)),
        "keras_accuracy": keras_acc,
    }
    if scores is None:
        return {**row, "status": "fail", "reason": reason}
    accuracy = float(np.mean(scores.argmax(1) == labels))
    agreement = float(np.mean(scores.argmax(1) == reference.argmax(1)))
    delta = (accuracy - keras_acc) * 100
    error = np.abs(scores - reference)
    reason = gate.judge(artifact["precision"], agreement, delta)
    return {
        **row,
        "accuracy": accuracy,
        "delta_pp": delta,
        "agreement": agreement,
        "max_abs_error": float(error.max()),
        "mean_abs_error": float(error.mean()),
        "status": "fail" if reason else "pass",
        "reason": reason,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    """The validation table as Markdown."""
    lines = [
        "| artifact | stage | runtime | precision | bytes | images | top-1 | Δ vs Keras (pp) | agreement |"
        " max abs err | mean abs err | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("accuracy") is None:
            numbers = "| | | | | "
        else:
            numbers = (
                f"| {r['accuracy']:.4f} | {r['delta_pp']:+.2f} | {r['agreement']:.4f} | {r['max_abs_error']:.4f} |"
                f" {r['mean_abs_error']:.5f} "
            )
        status = "pass" if r["status"] == "pass" else f"**FAIL**: {r['reason']}"
        lines.append(
            f"| {r['artifact']} | {r['stage']} | {r['runtime']} | {r['precision']} | {r['bytes']:,} | {r['images']} "
            f"{numbers}| {status} |"
        )
    return "\n".join(lines) + "\n"


def run_validate(
    run_path: str | Path, *, stage: str | None = None, gate: Gate | None = None, tflm_images: int = 200
) -> dict[str, Any]:
    """Validate every exported artifact of a run on the full test split.

    Args:
        run_path: A run folder with at least one export.
        stage: Only this export stage; None for all.
        gate: Thresholds; None for the defaults.
        tflm_images: Test images (stratified) for the TFLite Micro rows; 0 skips them.

    Returns:
        `{"passed": bool, "rows": [...], "gate": {...}}`, also written to
        validate.json and validate.md.
    """
    from edgecls.config import DataConfig
    from edgecls.data import load_split
    from edgecls.data.pipeline import preprocess_numpy
    from edgecls.export import exported_artifacts
    from edgecls.optimize import load_stage_model
    from edgecls.runtimes import KerasRunner, TFLMRunner, WorkerError, isolated_scores, predict

    gate = gate or Gate()
    run = RunDir(run_path)
    artifacts = exported_artifacts(run, stage)
    recorded = run.require_stage("finetune")["inputs"]
    mode, size = recorded["model"]["preprocessing"], recorded["model"]["input_size"]
    test, _ = load_split(DataConfig(**recorded["data_config"]), size, recorded["seed"], "test")
    images = preprocess_numpy(test.images, mode)
    references: dict[str, np.ndarray] = {}
    for source in sorted({a["source_stage"] for a in artifacts}):
        references[source] = predict(KerasRunner(load_stage_model(run, source)[0]), images, batch_size=256)
    classes = len(recorded["class_names"])
    per_class = [np.flatnonzero(test.labels == c)[: max(1, tflm_images // classes)] for c in range(classes)]
    per_class = np.concatenate(per_class)
    subset = np.sort(per_class)[:tflm_images]

    rows = []
    for artifact in artifacts:
        reference = references[artifact["source_stage"]]
        keras_acc = float(np.mean(reference.argmax(1) == test.labels))
        runtime = "litert" if artifact["format"] == "tflite" else "onnxruntime"
        problem = verify_model_file(artifact["path"])
        scores = None
        if problem is None:
            try:
                scores = isolated_scores(artifact["path"], test.images, mode=mode)
            except WorkerError as exc:
                problem = str(exc)
        rows.append(_row(artifact, runtime, scores, test.labels, reference, keras_acc, gate, problem))
        if artifact["format"] == "tflite" and artifact["precision"] == "int8" and tflm_images and problem is None:
            sub_keras = float(np.mean(reference[subset].argmax(1) == test.labels[subset]))
            micro = predict(TFLMRunner(artifact["path"]), images[subset])
            rows.append(_row(artifact, "tflite-micro", micro, test.labels[subset], reference[subset], sub_keras, gate))
    result = {"passed": all(r["status"] == "pass" for r in rows), "gate": asdict(gate), "rows": rows}
    atomic_write_json(run.file("validate.json"), result)
    atomic_write_text(run.file("validate.md"), markdown(rows))
    return result
