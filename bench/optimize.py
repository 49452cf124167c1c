"""Benchmark of `edgecls optimize` (issue 3) on the run that bench/finetune.py trained (full strategy).

Prunes to 50 % then prune-preserving QAT, and QAT of the dense model, on the full
real CIFAR-10; writes the "optimize" section of docs/benchmarks.md.

Usage: python bench/optimize.py [--run bench-runs/bench-full] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import time

from common import ROOT, git_sha, machine, today, write_section


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default="bench-runs/bench-full")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    run = ROOT / args.run
    commands = [
        ["edgecls", "optimize", args.run, "--prune", "0.5", "--qat", "--epochs", str(args.epochs), "--force"],
        ["edgecls", "optimize", args.run, "--qat", "--epochs", str(args.epochs), "--force"],
    ]
    walls = []
    for command in commands:
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT)
        walls.append(time.perf_counter() - start)
    dense = json.loads((run / "metrics.json").read_text())
    stages = {name: json.loads((run / name / "metrics.json").read_text()) for name in ("prune", "qat", "pqat")}
    base = dense["test_accuracy"]
    gzip_dense = stages["prune"]["gzip_bytes_dense"]
    lines = [
        "## Pruning and quantization-aware training (`edgecls optimize`, issue 3)",
        "",
        f"- Date: {today()}; edgecls commit {git_sha()}; machine: {machine()}.",
        f"- Starting point: `{args.run}` (MobileNet v1 0.25 @128 px, `full` strategy, from `python bench/finetune.py`);"
        " data: the full JPEG CIFAR-10 from ../shared (45,000 train, 10,000 test).",
        f"- Commands: `{shlex.join(commands[0])}` ({walls[0] / 60:.1f} min), then `{shlex.join(commands[1])}`"
        f" ({walls[1] / 60:.1f} min). Reproduce: `python bench/optimize.py --epochs {args.epochs}`.",
        "",
        "| model | test accuracy | Δ vs dense (pp) | sparsity (conv + dense kernels) | gzip of .h5 | target |",
        "|---|---|---|---|---|---|",
        f"| (a) dense float (finetune) | {base:.4f} | 0.00 | {stages['prune']['dense_sparsity']:.3f} |"
        f" {gzip_dense / 1024:.0f} KiB | |",
    ]
    targets = {
        "prune": ("(b) 50 % pruned float", 1.0),
        "qat": ("(c) QAT", 0.3),
        "pqat": ("(d) 50 % pruned + PQAT", 1.0),
    }
    for name, (label, limit) in targets.items():
        row = stages[name]
        delta = (row["test_accuracy"] - base) * 100
        verdict = "met" if -delta <= limit else f"missed by {-delta - limit:.2f} pp"
        lines.append(
            f"| {label} | {row['test_accuracy']:.4f} | {delta:+.2f} | {row['sparsity']:.3f} |"
            f" {row['gzip_bytes'] / 1024:.0f} KiB | ≤ {limit} pp: {verdict} |"
        )
    lines += [
        "",
        "Zeros in the int8 TFLite weights of the PQAT model: see the export section (`int8_weight_sparsity` in export.json).",
    ]
    write_section("optimize", "\n".join(lines))


if __name__ == "__main__":
    main()
