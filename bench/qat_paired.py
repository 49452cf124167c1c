"""Is an int8 model's gap to its float model larger than the test split can tell? A paired count.

Issue 10 asks every zoo row's QAT int8 file to stay within 0.3 points of its float model. Both are
scored on the same 10,000 test images, so the comparison is paired: only the images on which the two
disagree about correctness move the difference. This script scores a run's fine-tuned Keras model
and the int8 TFLite file of one of its exported stages on the whole test split, counts

- b: images the float model gets right and the int8 file wrong,
- c: images the int8 file gets right and the float model wrong,

and reports the difference (c - b) / N with its 95 % interval (normal approximation of the paired
difference) and McNemar's exact two-sided p-value (b against b + c fair coin flips): the chance of a
split at least this uneven if int8 and float were equally accurate on the population the test images
were drawn from.

Usage:
    python bench/qat_paired.py bench-runs/zoo/mcu-142 bench-runs/zoo/mcu-160 [...] [--stage qat]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import numpy as np
from common import git_sha, invocation, machine, today, write_section

from edgecls.data import load_split
from edgecls.run import RunDir
from edgecls.runtimes import KerasRunner, isolated_scores, predict


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: P(a Binomial(b + c, 1/2) count at least as far from even as `b`)."""
    n, low = b + c, min(b, c)
    if n == 0:
        return 1.0
    log_half = n * math.log(0.5)
    tail = sum(math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + log_half) for k in range(low + 1))
    return min(1.0, 2 * tail)


def paired_interval(b: int, c: int, n: int) -> tuple[float, float]:
    """95 % interval of the paired accuracy difference (c - b) / n, in points (normal approximation)."""
    difference = (c - b) / n
    spread = 1.96 * math.sqrt(max((b + c) / n - difference**2, 0.0) / n)
    return 100 * (difference - spread), 100 * (difference + spread)


def score_runs(folders: list[Path], stage: str) -> list[dict]:
    """Float and int8 correctness of each run on its whole test split, and the paired figures.

    Copies of one run (the same fine-tuned model file and data) share the decoded test split and the float
    model's correctness, computed once; one split is kept in memory at a time (a 224-px split is 1.5 GB).
    """
    rows, shared = [], {}
    for folder in folders:
        run = RunDir(folder)
        record = run.finetune_record()
        digest = hashlib.sha256(run.file("model.keras").read_bytes()).hexdigest()
        key = (digest, record.input_size, record.seed, json.dumps(record.data_config, sort_keys=True))
        if key not in shared:
            shared.clear()
            test, _ = load_split(record.data(), record.input_size, record.seed, "test")
            model, _ = run.load_model("finetune")
            scores = predict(KerasRunner(model), test.images, mode=record.preprocessing)
            shared[key] = (test, scores.argmax(1) == test.labels)
        test, float_right = shared[key]
        int8_path = folder / "export" / stage / "model_int8.tflite"
        int8_right = isolated_scores(int8_path, test.images, mode=record.preprocessing).argmax(1) == test.labels
        b, c, n = int(np.sum(float_right & ~int8_right)), int(np.sum(int8_right & ~float_right)), len(test.labels)
        rows.append({
            "run": folder.name, "size": record.input_size, "n": n, "float": float_right.mean(),
            "int8": int8_right.mean(), "b": b, "c": c, "p": mcnemar_exact(b, c), "interval": paired_interval(b, c, n),
        })  # fmt: skip
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| run | input | float | int8 TFLite | int8 - float | float right, int8 wrong (b) | int8 right, float wrong (c) |"
        " 95 % interval of int8 - float | McNemar exact p |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in rows:
        low, high = row["interval"]
        lines.append(
            f"| {row['run']} | {row['size']} px | {row['float']:.4f} | {row['int8']:.4f} |"
            f" {100 * (row['int8'] - row['float']):+.2f} | {row['b']} | {row['c']} | {low:+.2f} to {high:+.2f} |"
            f" {row['p']:.3f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--stage", default="qat", help="the exported stage whose model_int8.tflite is scored")
    args = parser.parse_args()
    rows = score_runs(args.runs, args.stage)
    lines = [
        "### QAT int8 against float, paired on the test images (issue 10's 0.3-point rule)",
        "",
        f"- `{invocation()}` ({today()}, edgecls {git_sha()}, {machine()}): each run's fine-tuned Keras model and the"
        f" int8 TFLite file of its `{args.stage}` export, on all test images of the full JPEG CIFAR-10 of ../shared"
        " (the zoo's float and int8 columns).",
        "- Only images on which the two disagree about correctness move the difference; the interval and McNemar's"
        " exact test read those counts (bench/qat_paired.py's docstring).",
        "",
        *table(rows),
    ]
    write_section("qat-paired", "\n".join(lines))


if __name__ == "__main__":
    main()
