"""Which LiteRT does TFLite Micro compute like? Its reference kernels, or its optimized ones (XNNPACK, ruy)?

`edgecls validate` judges the TFLite Micro row by its top-1 agreement with LiteRT on the same int8
file and images. This script scores a run's int8 file on those images three ways, each in a child
process as validate does: TFLite Micro, LiteRT's reference kernels, LiteRT's default (optimized)
kernels; and prints the agreements, the largest score differences, and, for every image where
TFLite Micro and the optimized kernels disagree, the optimized kernels' two best scores.

Usage:
    python bench/tflm_yardstick.py RUN [--stage qat] [--images 200]     # writes its docs/benchmarks.md section
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import git_sha, invocation, machine, today, write_section

from edgecls.data import load_split
from edgecls.preprocessing import normalize_numpy
from edgecls.run import RunDir
from edgecls.runtimes import isolated_scores, tflm_scores_isolated
from edgecls.validate import micro_subset


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--stage", default="qat", help="the exported stage whose model_int8.tflite is scored")
    parser.add_argument("--images", type=int, default=200, help="as validate.tflm_images")
    args = parser.parse_args()
    run = RunDir(args.run)
    record = run.finetune_record()
    test, names = load_split(record.data(), record.input_size, record.seed, "test")
    subset = micro_subset(test.labels, len(names), args.images)
    images, path = test.images[subset], args.run / "export" / args.stage / "model_int8.tflite"
    micro = tflm_scores_isolated(path, normalize_numpy(images, record.preprocessing))
    reference = isolated_scores(path, images, mode=record.preprocessing, reference_kernels=True)
    optimized = isolated_scores(path, images, mode=record.preprocessing)
    flips = np.flatnonzero(micro.argmax(1) != optimized.argmax(1))
    lines = [
        "## TFLite Micro's yardstick: LiteRT's reference or optimized kernels (`edgecls validate`)",
        "",
        f"- `{invocation()}` ({today()}, edgecls {git_sha()}, {machine()}): the int8 file of `{args.stage}` on the"
        f" {len(subset)} test images of validate's TFLite Micro rows (data `{record.data_config['source']}`, model"
        f" {record.backbone} {record.alpha} @{record.input_size} px); each runtime in a child process.",
        f"- Top-1 agreement: TFLite Micro with the reference kernels **{agreement(micro, reference):.4f}**, with the"
        f" optimized kernels **{agreement(micro, optimized):.4f}**; reference with optimized"
        f" {agreement(reference, optimized):.4f}.",
        f"- Largest score difference: TFLite Micro vs reference {np.abs(micro - reference).max():.5f}, optimized vs"
        f" reference {np.abs(optimized - reference).max():.5f}.",
        f"- Images where TFLite Micro and the optimized kernels disagree: {len(flips)}; the optimized kernels' two best"
        " scores there: " + ("; ".join(f"{a:.5f} / {b:.5f}" for a, b in (np.sort(optimized[i])[::-1][:2] for i in flips))
                              or "none") + ".",
        "- So validate compares the TFLite Micro row with the reference kernels, which TFLite Micro's are ports of; the"
        " optimized kernels round differently and can flip images whose two best scores are nearly tied.",
    ]  # fmt: skip
    write_section("tflm-yardstick", "\n".join(lines))


if __name__ == "__main__":
    main()
