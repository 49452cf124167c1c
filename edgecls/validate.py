"""The validate stage: every exported file on the FULL test split, against its Keras model, with a gate.

`run_validate(run)` evaluates each artifact of every export (or one stage's) on
its runtime — .tflite on LiteRT, .onnx on ONNX Runtime, int8 .tflite also on
TFLite Micro (on a subset: TFLM's reference kernels are slow) — and compares it
with the Keras model it was converted from. Model files are verified before
use and run in a child process, so a corrupt or truncated file becomes a
failing row with its reason, never a crash of edgecls.

Default gate (override with `Gate(...)` or the CLI flags): fp32 agreement with
Keras >= 99.9 %; fp16 agreement >= 99.5 %; dynamic and int8 accuracy at most
1.0 pp below Keras. An int8 file's accuracy is judged on the full split by its
LiteRT row; its TFLite Micro row, on a subset, is judged on agreeing with LiteRT
on the same images (>= 99 %): it checks the microcontroller's kernels, and a
200-image accuracy moves by more than a point on sampling alone. Writes
`validate.json` and `validate.md` in the run folder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.config import ValidateConfig
from edgecls.errors import RunError, UnsavedResultsError
from edgecls.escape import escape_markdown
from edgecls.records import ExportedFile
from edgecls.run import RunDir, atomic_write_json, atomic_write_text, check_writable


@dataclass(frozen=True)
class Gate:
    """Pass/fail thresholds of `edgecls validate` (from the `validate` config section, which checks them).

    Attributes:
        fp32_min_agreement: Top-1 agreement with Keras an fp32 file needs. Defaults to 0.999.
        fp16_min_agreement: The same for fp16. Defaults to 0.995.
        int8_max_drop_pp: Accuracy a dynamic-range or int8 file may lose, in points. Defaults to 1.0.
        tflm_min_agreement: Top-1 agreement of TFLite Micro with LiteRT on the same int8 file and
            images. Defaults to 0.99.
    """

    fp32_min_agreement: float = 0.999
    fp16_min_agreement: float = 0.995
    int8_max_drop_pp: float = 1.0
    tflm_min_agreement: float = 0.99

    @classmethod
    def from_config(cls, cfg: ValidateConfig) -> Gate:
        return cls(cfg.min_agreement_fp32, cfg.min_agreement_fp16, cfg.max_int8_drop, cfg.min_agreement_tflm)

    def judge(self, precision: str, agreement: float, delta_pp: float) -> str | None:
        """None when the row passes, else the reason."""
        if precision in ("fp32", "fp16"):
            need = self.fp32_min_agreement if precision == "fp32" else self.fp16_min_agreement
            if agreement < need - 1e-12:
                return f"agreement {agreement:.4f} < {need}"
            return None
        if -delta_pp > self.int8_max_drop_pp + 1e-9:  # on 100 images one image is exactly 1 pp, give or take a float ulp
            return f"accuracy {delta_pp:+.2f} pp vs Keras, allowed -{self.int8_max_drop_pp}"
        return None

    def judge_micro(self, litert_agreement: float) -> str | None:
        """None when TFLite Micro predicts as LiteRT's reference kernels do on the same int8 file often enough.

        The int8 file's accuracy is the LiteRT row's verdict, on every test image. On the TFLite
        Micro subset (200 images by default) one image is half a point, and a model whose int8
        predictions differ from Keras on 3.5 % of images (MobileNetV2 1.0) moves by about 1.3
        points from sampling alone: there the question is whether the microcontroller's kernels
        compute what TFLite's reference kernels do. Not LiteRT's optimized kernels: they round
        differently and flip near-ties (3 of 200 images of mcu-default on 2026-12-07, whose
        reference-kernel scores TFLite Micro matched exactly; docs/benchmarks.md, `bench/tflm_yardstick.py`).
        """
        if litert_agreement < self.tflm_min_agreement - 1e-12:
            return f"agreement with LiteRT's reference kernels {litert_agreement:.4f} < {self.tflm_min_agreement}"
        return None


WORST_SHOWN = 3


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


def _row(artifact: ExportedFile, runtime: str, scores: np.ndarray | None, labels, reference, keras_acc, gate, reason=None):
    row = {
        "artifact": artifact.file,
        "stage": artifact.stage,
        "runtime": runtime,
        "precision": artifact.precision,
        "bytes": artifact.bytes,
        "images": int(len(labels)),
        "keras_accuracy": keras_acc,
    }
    if scores is None:
        return {**row, "status": "fail", "reason": reason}
    accuracy = float(np.mean(scores.argmax(1) == labels))
    agreement = float(np.mean(scores.argmax(1) == reference.argmax(1)))
    delta = (accuracy - keras_acc) * 100
    error = np.abs(scores - reference)
    reason = gate.judge(artifact.precision, agreement, delta)
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


def micro_subset(labels: np.ndarray, classes: int, images: int) -> np.ndarray:
    """Indices of the TFLite Micro rows' test images: the first `images // classes` of each class, in test order."""
    per_class = [np.flatnonzero(labels == c)[: max(1, images // classes)] for c in range(classes)]
    return np.sort(np.concatenate(per_class))[:images]


def _micro_row(artifact: ExportedFile, scores, litert, labels, reference, keras_acc, gate: Gate, reason=None):
    """The TFLite Micro row: accuracy and agreement against Keras as reported, judged against `litert`, the scores of
    LiteRT's reference kernels on the same images (TFLite Micro's kernels are ports of them)."""
    row = _row(artifact, "tflite-micro", scores, labels, reference, keras_acc, gate, reason)
    if scores is None or litert is None:
        return row
    parity = float(np.mean(scores.argmax(1) == litert.argmax(1)))
    reason = gate.judge_micro(parity)
    return row | {"litert_agreement": parity, "status": "fail" if reason else "pass", "reason": reason}


def worst_int8_layers(run: RunDir, rows: list[dict[str, Any]], *, trust: bool = False) -> dict[str, dict[str, list[str]]]:
    """For each post-training stage with a failing int8 row: its worst layers per format (inspected if not yet).

    The per-layer report is `edgecls inspect`'s; a stage it cannot inspect is left out, never an error here.
    """
    from edgecls.config import ExportConfig
    from edgecls.errors import EdgeclsError
    from edgecls.export import QAT_STAGES
    from edgecls.export.inspect import run_inspect
    from edgecls.records import quant_debug_record

    dropped = {r["stage"] for r in rows if r["precision"] == "int8" and r["status"] != "pass" and r.get("accuracy") is not None}
    failing = sorted(dropped - set(QAT_STAGES))  # an accuracy drop, not a file that could not run
    worst = {}
    for stage in failing:
        try:
            record = quant_debug_record(run, stage)
            if record is None:
                run_inspect(run.path, ExportConfig(stage=stage), trust=trust)
                record = quant_debug_record(run, stage)
        except EdgeclsError:
            continue
        worst[stage] = {fmt: list(layers[:WORST_SHOWN]) for fmt, layers in record.worst.items()}
    return worst


def markdown(rows: list[dict[str, Any]], worst: dict[str, dict[str, list[str]]] | None = None) -> str:
    """The validation table as Markdown, then the worst int8 layers of each stage whose int8 row failed."""
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
        status = "pass" if r["status"] == "pass" else f"**FAIL**: {escape_markdown(r['reason'])}"
        if r.get("litert_agreement") is not None:
            status += f" (agrees with LiteRT's reference kernels on {r['litert_agreement']:.4f})"
        lines.append(
            f"| {escape_markdown(r['artifact'])} | {escape_markdown(r['stage'])} | {r['runtime']} | {r['precision']}"
            f" | {r['bytes']:,} | {r['images']} "
            f"{numbers}| {status} |"
        )
    for stage, formats in (worst or {}).items():
        lines += ["", f"Worst int8 layers of `{escape_markdown(stage)}` (`edgecls inspect`, export/{stage}/quant_debug.md):"]
        lines += [f"- {fmt}: " + ", ".join(escape_markdown(name) for name in layers) for fmt, layers in formats.items()]
    return "\n".join(lines) + "\n"


def run_validate(run_path: str | Path, cfg: ValidateConfig | None = None, *, trust: bool = False) -> dict[str, Any]:
    """Validate every exported artifact of a run on the full test split.

    Args:
        run_path: A run folder with at least one export.
        cfg: The `validate` config section (stage, gate thresholds, TFLite Micro images); None for the defaults.
        trust: Load Keras models with Lambda layers (`--trust-run`).

    Returns:
        `{"passed": bool, "rows": [...], "gate": {...}}`, also written to
        validate.json and validate.md.
    """
    from edgecls.data import DecodedSplit, load_split
    from edgecls.data.pipeline import preprocess_numpy
    from edgecls.models.resize import input_size_of
    from edgecls.records import exported_files
    from edgecls.runtimes import KerasRunner, WorkerError, isolated_scores, predict, tflm_scores_isolated

    cfg = cfg or ValidateConfig()
    gate, stage, tflm_images = Gate.from_config(cfg), cfg.stage, cfg.tflm_images
    run = RunDir(run_path)
    artifacts = exported_files(run, stage)
    record = run.finetune_record()
    check_writable(run.path, "fix the run folder's permissions or free some space")  # before minutes of inference
    mode = record.preprocessing
    decoded: dict[int, DecodedSplit] = {}  # input size -> test split (uint8): `--fit` may change a stage's size

    def test_at(size: int) -> DecodedSplit:
        if size not in decoded:
            decoded[size] = load_split(record.data(), size, record.seed, "test")[0]
        return decoded[size]

    references: dict[str, np.ndarray] = {}
    sizes: dict[str, int] = {}
    for source in sorted({a.source_stage for a in artifacts}):
        model = run.load_model(source, trust=trust)[0]
        sizes[source] = input_size_of(model)
        references[source] = predict(KerasRunner(model), test_at(sizes[source]).images, batch_size=256, mode=mode)
    test = test_at(record.input_size)  # the same images and labels at every size
    subset = micro_subset(test.labels, len(record.class_names), tflm_images)

    rows = []
    for artifact in artifacts:
        reference = references[artifact.source_stage]
        test = test_at(sizes[artifact.source_stage])
        keras_acc = float(np.mean(reference.argmax(1) == test.labels))
        runtime = "litert" if artifact.format == "tflite" else "onnxruntime"
        problem = artifact.problem() or verify_model_file(artifact.path)
        scores = None
        if problem is None:
            try:
                scores = isolated_scores(artifact.path, test.images, mode=mode)
            except WorkerError as exc:
                problem = str(exc)
        rows.append(_row(artifact, runtime, scores, test.labels, reference, keras_acc, gate, problem))
        if artifact.format == "tflite" and artifact.precision == "int8" and tflm_images and problem is None:
            sub_keras = float(np.mean(reference[subset].argmax(1) == test.labels[subset]))
            micro, litert_ref, reason = None, None, None
            try:
                micro = tflm_scores_isolated(artifact.path, preprocess_numpy(test.images[subset], mode))
                litert_ref = isolated_scores(artifact.path, test.images[subset], mode=mode, reference_kernels=True)
            except WorkerError as exc:
                reason = str(exc)
            labels, keras = test.labels[subset], reference[subset]
            rows.append(_micro_row(artifact, micro, litert_ref, labels, keras, sub_keras, gate, reason))
    worst = worst_int8_layers(run, rows, trust=trust)
    result = {"passed": all(r["status"] == "pass" for r in rows), "gate": asdict(gate), "rows": rows}
    result["worst_int8_layers"] = worst
    keys = ("artifact", "stage", "runtime", "precision", "bytes", "accuracy", "delta_pp", "agreement", "status", "reason")
    summary = [{k: r.get(k) for k in keys} for r in rows]
    inputs = {f"{a.stage}/{a.file}": a.sha256 for a in artifacts}
    try:
        atomic_write_json(run.file("validate.json"), result)
        atomic_write_text(run.file("validate.md"), markdown(rows, worst))
        run.record_stage("validate", seed=record.seed, inputs={"artifacts": inputs, "gate": asdict(gate)},
                         outputs=["validate.json", "validate.md"], metrics={"passed": result["passed"], "rows": summary},
                         warnings=[])  # fmt: skip
    except RunError as exc:
        raise UnsavedResultsError(f"validation finished, but its results were not saved: {exc}", result) from None
    return result
