"""Benchmark of `edgecls optimize` (issue 3) on the run that bench/finetune.py trained (full strategy).

Prunes to 50 % then prune-preserving QAT, and QAT of the dense model, on the full
real CIFAR-10; writes the "optimize" section of docs/benchmarks.md.

With `--study NAME` the two commands run on their own copies of the run
(bench-runs/NAME-prune, bench-runs/NAME-qat), so the run's own stages (which the
export benchmark uses) stay, and the table goes to section "optimize-NAME";
`--tabulate` only reads the stages an earlier identical invocation left.

Usage: python bench/optimize.py [--run bench-runs/bench-full] [--epochs 4] [--lr 5e-4] [--study NAME [--tabulate]]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import time

from common import ROOT, git_sha, machine, today, write_section


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default="bench-runs/bench-full")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", help="Peak pruning learning rate (edgecls's default when omitted).")
    parser.add_argument("--study", help="Work on copies of --run; write section optimize-STUDY.")
    parser.add_argument("--tabulate", action="store_true", help="With --study: only tabulate finished copies.")
    args = parser.parse_args()
    runs = {"prune": args.run, "qat": args.run}
    if args.study:
        runs = {kind: f"bench-runs/{args.study}-{kind}" for kind in runs}
        for folder in runs.values():
            if not args.tabulate:
                shutil.rmtree(ROOT / folder, ignore_errors=True)
                shutil.copytree(ROOT / args.run, ROOT / folder, ignore=shutil.ignore_patterns("export", "firmware"))
    lr = ["--lr", args.lr] if args.lr else []
    commands = [
        ["edgecls", "optimize", runs["prune"], "--prune", "0.5", "--qat", "--epochs", str(args.epochs), *lr, "--force"],
        ["edgecls", "optimize", runs["qat"], "--qat", "--epochs", str(args.epochs), "--force"],
    ]
    walls = []
    for command in commands:
        start = time.perf_counter()
        if not args.tabulate:
            subprocess.run(command, check=True, cwd=ROOT)
        walls.append(time.perf_counter() - start)
    reproduce = ["--epochs", str(args.epochs), *lr, *(["--study", args.study] if args.study else [])]
    run = ROOT / args.run
    dense = json.loads((run / "metrics.json").read_text())
    stages = {name: json.loads((ROOT / runs[kind] / name / "metrics.json").read_text())
              for name, kind in (("prune", "prune"), ("pqat", "prune"), ("qat", "qat"))}  # fmt: skip
    base = dense["test_accuracy"]
    gzip_dense = stages["prune"]["gzip_bytes_dense"]
    lines = [
        "## Pruning and quantization-aware training (`edgecls optimize`, issue 3)"
        if not args.study
        else f"### Longer schedule: {args.epochs} epochs per step{f', pruning at {args.lr}' if args.lr else ''} (issue 3)",
        "",
        f"- Date: {today()}; edgecls commit {git_sha()}; machine: {machine()}.",
        f"- Starting point: `{args.run}` (MobileNet v1 0.25 @128 px, `full` strategy, from `python bench/finetune.py`);"
        " data: the full JPEG CIFAR-10 from ../shared (45,000 train, 10,000 test).",
        f"- Commands: `{shlex.join(commands[0])}`{_minutes(walls[0], args.tabulate)}, then `{shlex.join(commands[1])}`"
        f"{_minutes(walls[1], args.tabulate)}. Reproduce: `{shlex.join(['python', 'bench/optimize.py', *reproduce])}`.",
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
    if not args.study:  # the export benchmark runs on the run's own stages
        lines += [
            "",
            "Zeros in the int8 TFLite weights of the PQAT model: see the export section (`int8_weight_sparsity` in export.json).",
        ]
    write_section(f"optimize-{args.study}" if args.study else "optimize", "\n".join(lines))


def _minutes(seconds: float, tabulated: bool) -> str:
    return "" if tabulated else f" ({seconds / 60:.1f} min)"


if __name__ == "__main__":
    main()
