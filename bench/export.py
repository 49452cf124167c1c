"""Benchmark of `edgecls export` (issue 4): every format and precision on the full CIFAR-10 test set.

Needs the run of bench/finetune.py (full strategy) with the stages of bench/optimize.py.
Exports the fine-tuned model in every precision, the QAT and PQAT models in int8,
measures each file's accuracy on all 10,000 test images against its Keras model,
then the effect of calibration size and method on int8 accuracy. Writes the
"export" and "calibration" sections of docs/benchmarks.md.

Usage: python bench/export.py [--run bench-runs/bench-full]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, git_sha, machine, today, write_section

CALIBRATION = "calibration/cifar10-jpeg_100_128px_seed0.json"


def accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    from edgecls.runtimes import open_runner, predict

    return float(np.mean(predict(open_runner(path), images, batch_size=100).argmax(1) == labels))


def test_split(run: Path):
    from edgecls.config import DataConfig
    from edgecls.data import load_split
    from edgecls.data.pipeline import preprocess_numpy

    manifest = json.loads((run / "manifest.json").read_text())
    recorded = manifest["stages"]["finetune"]["inputs"]
    split, _ = load_split(DataConfig(**recorded["data_config"]), 128, recorded["seed"], "test")
    return preprocess_numpy(split.images, "tf"), split.labels, recorded


def export_table(run: Path, images, labels, commands) -> list[str]:
    lines = [
        "| stage | file | precision | bytes | % of fp32 | I/O | test accuracy | Keras accuracy of its model |"
        " Δ (pp) | int8 weight zeros |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    fp32_bytes = {}
    for stage in ("finetune", "qat", "pqat"):
        summary = json.loads((run / "export" / stage / "export.json").read_text())
        for row in summary["artifacts"]:
            source = row["source_stage"]
            if stage != "finetune" and row["precision"] != "int8":
                continue
            metrics_file = "metrics.json" if source == "finetune" else f"{source}/metrics.json"
            keras = json.loads((run / metrics_file).read_text())["test_accuracy"]
            acc = accuracy(run / "export" / stage / row["file"], images, labels)
            if row["precision"] == "fp32":
                fp32_bytes[row["format"]] = row["bytes"]
            share = row["bytes"] / fp32_bytes[row["format"]] * 100 if row["format"] in fp32_bytes else float("nan")
            io_types = f"{row.get('input_dtype', 'float32')}/{row.get('output_dtype', 'float32')}"
            zeros = row.get("int8_weight_sparsity")
            lines.append(
                f"| {stage} | {row['file']} | {row['precision']} | {row['bytes']:,} | {share:.1f} % | {io_types} |"
                f" {acc:.4f} | {keras:.4f} ({source}) | {(acc - keras) * 100:+.2f} |"
                f" {'' if zeros is None else f'{zeros:.3f}'} |"
            )
    return lines


def calibration_study(run: Path, images, labels, recorded) -> list[str]:
    from edgecls.calibration import build_calibration, load_calibration
    from edgecls.data.pipeline import preprocess_numpy
    from edgecls.export import onnx as onnx_export
    from edgecls.export import tflite
    from edgecls.metrics import load_run_model

    model, _ = load_run_model(run)
    source = recorded["data_config"]["source"]
    lines = [
        "| calibration images | TFLite int8 accuracy | ONNX int8 (MinMax) | ONNX int8 (Entropy) | ONNX int8 (Percentile) |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as folder:
        fp32 = Path(folder) / "fp32.onnx"
        fp32.write_bytes(onnx_export.convert(model, 128).SerializeToString())
        for samples in (50, 100, 500, 2000):
            manifest = build_calibration(source, samples=samples, seed=0, input_size=128)
            pixels = preprocess_numpy(load_calibration(manifest, input_size=128), "tf")

            def representative(pixels=pixels):
                for image in pixels:
                    yield [image[None]]

            path = Path(folder) / f"int8_{samples}.tflite"
            path.write_bytes(tflite.convert(model, "int8", representative=representative))
            row = [f"{samples}", f"{accuracy(path, images, labels):.4f}"]
            for method in ("minmax", "entropy", "percentile"):
                if method != "minmax" and samples not in (100, 500):
                    row.append("")
                    continue
                out = Path(folder) / f"int8_{samples}_{method}.onnx"
                onnx_export.quantize(fp32, out, pixels, method)
                row.append(f"{accuracy(out, images, labels):.4f}")
            lines.append("| " + " | ".join(row) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default="bench-runs/bench-full")
    parser.add_argument("--skip-study", action="store_true")
    args = parser.parse_args()
    run = ROOT / args.run
    commands = [
        ["edgecls", "export", args.run, "--stage", "finetune", "--precision", "fp32,fp16,dynamic,int8",
         "--calibration", CALIBRATION, "--force"],
        ["edgecls", "export", args.run, "--stage", "qat", "--int8", "--force"],
        ["edgecls", "export", args.run, "--stage", "pqat", "--int8", "--force"],
    ]  # fmt: skip
    for command in commands:
        subprocess.run(command, check=True, cwd=ROOT)
    start = time.perf_counter()
    images, labels, recorded = test_split(run)
    lines = [
        "## Export (`edgecls export`, issue 4)",
        "",
        f"- Date: {today()}; edgecls commit {git_sha()}; machine: {machine()}.",
        f"- Run `{args.run}` (MobileNet v1 0.25 @128 px, see the fine-tuning and optimize sections); accuracy on"
        " all 10,000 JPEG CIFAR-10 test images (../shared), LiteRT (XNNPACK) for .tflite, ONNX Runtime CPU for .onnx.",
        f"- Float int8 calibration: `{CALIBRATION}` (100 training images, seed 0) for both TFLite and ONNX;"
        " QAT/PQAT int8 use their learned ranges. Reproduce: `python bench/export.py`.",
        *[f"- `{shlex.join(c)}`" for c in commands],
        "",
        *export_table(run, images, labels, commands),
    ]
    write_section("export", "\n".join(lines))
    if args.skip_study:
        return
    study = [
        "## Calibration size and method (issue 4)",
        "",
        f"- Date: {today()}; edgecls commit {git_sha()}; the fine-tuned float model of `{args.run}`;"
        " seeded stratified training images (`edgecls calibrate --samples N --seed 0`); accuracy on all 10,000"
        " test images. Reproduce: `python bench/export.py`.",
        "",
        *calibration_study(run, images, labels, recorded),
        "",
        f"(study took {(time.perf_counter() - start) / 60:.1f} min)",
    ]
    write_section("calibration", "\n".join(study))


if __name__ == "__main__":
    main()
