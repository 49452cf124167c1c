"""Benchmark of the int8 file-size levers against issue 4's target (int8 file <= 27 % of the fp32 file).

The levers `edgecls export` offers: one weight scale per tensor instead of per
output channel (`--granularity per-tensor`), dropping tensor names and signatures
(`--strip-strings`), and per-tensor quantization-aware training
(`edgecls optimize --qat --granularity per-tensor`) to win back the accuracy
per-tensor post-training quantization loses. Works on a copy of the run of
bench/finetune.py (bench-runs/size-study) so that run's own stages stay as they
are; every file's accuracy is measured on all 10,000 test images, and the bytes
of the int8 TFLite files are broken down by what they hold. Writes the
"int8-size" section of docs/benchmarks.md.

Usage: python bench/int8_size.py [--run bench-runs/bench-full] [--qat-lr 5e-4] [--epochs 4] [--structure-only]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from common import ROOT, git_sha, machine, today, write_section
from export import CALIBRATION, accuracy, test_split

STUDY = "bench-runs/size-study"


def tflite_bytes_by_kind(path: Path) -> dict[str, int]:
    """Bytes of int8 weights, int32 biases, quantization parameters, and everything else in a .tflite file."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    kinds = {"int8 weights": 0, "int32 biases": 0, "other tensors": 0, "scales + zero points": 0}
    by_type = {9: "int8 weights", 2: "int32 biases"}  # schema TensorType INT8, INT32
    for tensor in model.subgraphs[0].tensors:
        data = model.buffers[tensor.buffer].data
        kinds[by_type.get(tensor.type, "other tensors")] += 0 if data is None else len(data)
        quantization = tensor.quantization
        if quantization is not None and quantization.scale is not None:  # float32 scales, int64 zero points
            kinds["scales + zero points"] += 4 * len(quantization.scale) + 8 * len(quantization.zeroPoint)
    kinds["graph, names, metadata"] = path.stat().st_size - sum(kinds.values())
    return kinds


def structure_sizes(name: str, alpha: float | None, input_size: int) -> list[str]:
    """Table rows: fp32 and int8 TFLite bytes of a freshly built classifier, per-channel and per-tensor, plain and stripped.

    File sizes depend on tensor shapes, not on weight values, as long as no two
    constants are equal (the converter stores equal constants once: a fresh
    model's all-zero biases would share one buffer), so every weight is drawn at
    random (positive, for BatchNorm variances).
    """
    import numpy as np

    from edgecls.export import tflite
    from edgecls.models import create_model

    model, _ = create_model(name, num_classes=10, input_size=input_size, alpha=alpha, weights="none")
    rng = np.random.default_rng(0)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in model.get_weights()])

    def representative():
        for image in np.random.default_rng(0).uniform(-1, 1, (4, 1, input_size, input_size, 3)).astype(np.float32):
            yield [image]

    fp32 = tflite.convert(model, "fp32")
    rows = []
    for granularity in ("per-channel", "per-tensor"):
        int8 = tflite.convert(model, "int8", representative=representative, per_tensor=granularity == "per-tensor")
        for stripped in (False, True):
            a, b = (tflite.strip_strings(x) if stripped else x for x in (int8, fp32))
            rows.append(
                f"| {name} {alpha or ''} @{input_size} | {granularity}{', stripped' if stripped else ''} |"
                f" {len(a):,} | {len(b):,} | {len(a) / len(b) * 100:.2f} % |"
            )
    return rows


def measure(study: Path, stage: str, images, labels) -> dict[str, dict]:
    """export.json rows of `stage` by file, with the test accuracy of every int8 file added."""
    rows = {row["file"]: row for row in json.loads((study / "export" / stage / "export.json").read_text())["artifacts"]}
    for name, row in rows.items():
        if row["precision"] == "int8":
            row["test_accuracy"] = accuracy(study / "export" / stage / name, images, labels)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default="bench-runs/bench-full")
    parser.add_argument("--qat-lr", default="5e-4")
    parser.add_argument("--epochs", default="4")
    parser.add_argument("--structure-only", action="store_true", help="Only the file-size table of fresh backbones.")
    args = parser.parse_args()
    structure = [
        "## int8 file size by backbone (issue 4)",
        "",
        f"- Date: {today()}; edgecls commit {git_sha()}. Freshly built classifiers (10 classes, distinct random"
        " weights: a file's size then depends on tensor shapes only), converted with `edgecls.export.tflite.convert`;"
        " no metadata."
        " Reproduce: `python bench/int8_size.py --structure-only`.",
        "",
        "| model | int8 weights | int8 TFLite bytes | fp32 TFLite bytes | int8 / fp32 |",
        "|---|---|---|---|---|",
        *structure_sizes("mobilenet", 0.25, 128),
        *structure_sizes("mobilenet_v2", 1.0, 224),
        *structure_sizes("mobilenet", 1.0, 224),
    ]
    write_section("int8-size-structure", "\n".join(structure))
    if args.structure_only:
        return
    study = ROOT / STUDY
    shutil.rmtree(study, ignore_errors=True)
    shutil.copytree(ROOT / args.run, study, ignore=shutil.ignore_patterns("export", "firmware", "bench.*"))
    images, labels, _ = test_split(study)
    keras = json.loads((study / "metrics.json").read_text())["test_accuracy"]
    export = ["edgecls", "export", STUDY, "--int8", "--force"]
    cases = [
        ("per-channel (default)", "finetune", [[*export, "--stage", "finetune", "--calibration", CALIBRATION]]),
        ("per-channel, strings stripped", "finetune",
         [[*export, "--stage", "finetune", "--calibration", CALIBRATION, "--strip-strings"]]),
        ("per-tensor", "finetune", [[*export, "--stage", "finetune", "--calibration", CALIBRATION, "--granularity", "per-tensor"]]),
        ("per-tensor, strings stripped", "finetune",
         [[*export, "--stage", "finetune", "--calibration", CALIBRATION, "--granularity", "per-tensor", "--strip-strings"]]),
        ("per-tensor QAT", "qat",
         [["edgecls", "optimize", STUDY, "--qat", "--granularity", "per-tensor", "--epochs", args.epochs,
           "--qat-lr", args.qat_lr, "--force"], [*export, "--stage", "qat"]]),
        ("per-tensor QAT, strings stripped", "qat", [[*export, "--stage", "qat", "--strip-strings"]]),
    ]  # fmt: skip
    lines = [
        "| lever | int8 TFLite bytes | fp32 TFLite bytes | int8 / fp32 | TFLite int8 accuracy | ONNX int8 bytes |"
        " ONNX int8 / fp32 | ONNX int8 accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    commands, breakdowns = [], {}
    for label, stage, steps in cases:
        start = time.perf_counter()
        for command in steps:
            subprocess.run(command, check=True, cwd=ROOT)
            commands.append(command)
        rows = measure(study, stage, images, labels)
        tfl, tfl32, onx, onx32 = (rows[f] for f in ("model_int8.tflite", "model_fp32.tflite", "model_int8.onnx", "model_fp32.onnx"))
        lines.append(
            f"| {label} | {tfl['bytes']:,} | {tfl32['bytes']:,} | {tfl['bytes'] / tfl32['bytes'] * 100:.2f} % |"
            f" {tfl['test_accuracy']:.4f} | {onx['bytes']:,} | {onx['bytes'] / onx32['bytes'] * 100:.2f} % |"
            f" {onx['test_accuracy']:.4f} |"
        )
        breakdowns[label] = tflite_bytes_by_kind(study / "export" / stage / "model_int8.tflite")
        print(lines[-1], f"({time.perf_counter() - start:.0f} s)", flush=True)
    qat = json.loads((study / "qat" / "metrics.json").read_text())["test_accuracy"]
    kinds = list(next(iter(breakdowns.values())))
    breakdown = [
        "| int8 TFLite file | " + " | ".join(kinds) + " |",
        "|---" * (len(kinds) + 1) + "|",
        *[f"| {label} | " + " | ".join(f"{b[k]:,}" for k in kinds) + " |" for label, b in breakdowns.items()],
    ]
    body = [
        "## int8 file size levers (issue 4)",
        "",
        f"- Date: {today()}; edgecls commit {git_sha()}; machine: {machine()}.",
        f"- A copy of `{args.run}` (MobileNet v1 0.25 @128 px; Keras accuracy of the fine-tuned model {keras:.4f},"
        f" of the per-tensor QAT model {qat:.4f}); accuracy on all 10,000 JPEG CIFAR-10 test images.",
        "- Reproduce: `python bench/int8_size.py`. Commands, in order:",
        *[f"  - `{shlex.join(c)}`" for c in commands],
        "",
        *lines,
        "",
        "What the int8 TFLite files hold (bytes):",
        "",
        *breakdown,
    ]
    write_section("int8-size", "\n".join(body))


if __name__ == "__main__":
    main()
