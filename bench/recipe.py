"""Recipe study for the default job (issue 10): which fine-tuning recipe wins on CIFAR-10.

Every variant is `edgecls finetune` on the full JPEG CIFAR-10 of ../shared (45,000 train /
5,000 val / 10,000 test), MobileNet v1 0.25 @128 px from the ImageNet file, run through the
CLI exactly as a user would, one after the other (never two at once: they would share the
cores and their wall times would mean nothing). A variant whose run folder already holds a
finished manifest is not run again, and one that was stopped mid-way is resumed (`edgecls finetune
--resume`), so the study can be stopped and continued, across sessions too.

Model selection is by validation accuracy; the test accuracy is reported, never used to choose.
Each finished variant's figures (with its command, date, commit and machine) are also kept in
bench/results/recipe.json (committed), so `--write` in a checkout without the run folders keeps
the variants measured elsewhere.

Usage:
    python bench/recipe.py [--only NAME ...] [--runs-dir bench-runs/recipe]   # run what is missing
    python bench/recipe.py --write                                             # docs/benchmarks.md section
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from common import CIFAR_JPEG, ROOT, SHARED, cpu_model, git_sha, machine, record_rows, today, write_section


def pinned(flags: list[str]) -> list[str]:
    """`flags` with batch 64 and 10 epochs unless they set them: the defaults of the study's rows until 2026-12-07.

    Since then an unset batch size, lr and epochs follow the training split's size (128, 3e-3 and 12 on CIFAR-10),
    so a re-run of a row pins what its recipe meant when it was measured.
    """
    batch = [] if "--batch-size" in flags else ["--batch-size", "64"]
    epochs = [] if "--epochs" in flags else ["--epochs", "10"]
    return [*flags, *batch, *epochs]


def long_run(epochs: int) -> list[str]:
    """The default recipe's flags (BatchNorm trained, lr 2e-3, 1 warm-up epoch) for `epochs` without early stopping."""
    return ["--lr", "2e-3", "--set", "train.batchnorm=train", "--warmup-epochs", "1", "--epochs", str(epochs),
            "--set", "train.patience=0"]  # fmt: skip


# name -> (what it tests, extra finetune flags). The first is the old default (docs: 0.826).
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "old-default": ("the previous default: BatchNorm frozen, lr 1e-4", ["--lr", "1e-4", "--set", "train.batchnorm=frozen"]),
    "bn-lr1e-3": ("BatchNorm trained, lr 1e-3 (issue 10's hint)", ["--lr", "1e-3", "--set", "train.batchnorm=train"]),
    "bn-lr2e-3": ("BatchNorm trained, lr 2e-3", ["--lr", "2e-3", "--set", "train.batchnorm=train"]),
    "bn-lr2e-3-w1": (
        "BatchNorm trained, lr 2e-3, 1 warm-up epoch",
        ["--lr", "2e-3", "--set", "train.batchnorm=train", "--warmup-epochs", "1"],
    ),
    "bn-lr4e-3-w1": (
        "BatchNorm trained, lr 4e-3, 1 warm-up epoch",
        ["--lr", "4e-3", "--set", "train.batchnorm=train", "--warmup-epochs", "1"],
    ),
    "bn-sgd5e-2-w1": (
        "BatchNorm trained, Nesterov SGD lr 0.05, wd 5e-4, 1 warm-up epoch",
        [
            "--optimizer",
            "sgd",
            "--lr",
            "0.05",
            "--weight-decay",
            "5e-4",
            "--set",
            "train.batchnorm=train",
            "--warmup-epochs",
            "1",
        ],
    ),  # fmt: skip
    "bn-lr2e-3-w1-e7": (
        "BatchNorm trained, lr 2e-3, 1 warm-up epoch, 7 epochs (the 15-minute budget)",
        ["--lr", "2e-3", "--set", "train.batchnorm=train", "--warmup-epochs", "1", "--epochs", "7"],
    ),
    "bn-lr3e-3-w1-e7-b128": (
        "BatchNorm trained, lr 3e-3, batch 128, 1 warm-up epoch, 7 epochs",
        ["--lr", "3e-3", "--set", "train.batchnorm=train", "--warmup-epochs", "1", "--epochs", "7", "--batch-size", "128"],
    ),
    "bn-lr2e-3-w1-e12": (
        "BatchNorm trained, lr 2e-3, 1 warm-up epoch, 12 epochs (mcu-distilled's schedule without its teacher)",
        ["--lr", "2e-3", "--set", "train.batchnorm=train", "--warmup-epochs", "1", "--epochs", "12"],
    ),
    "bn-lr3e-3-w1-e12-b128": (
        "BatchNorm trained, lr 3e-3, batch 128, 1 warm-up epoch, 12 epochs (12 epochs at about the cost of 10 at batch 64)",
        ["--lr", "3e-3", "--set", "train.batchnorm=train", "--warmup-epochs", "1", "--epochs", "12", "--batch-size", "128"],
    ),
    "bn-lr2e-3-w1-ema": (
        "BatchNorm trained, lr 2e-3, 1 warm-up epoch, weight EMA with BatchNorm statistics (momentum 0.999, about 1.4 epochs)",
        ["--lr", "2e-3", "--set", "train.batchnorm=train", "--warmup-epochs", "1", "--ema-momentum", "0.999"],
    ),
    "bn-lr2e-3-w1-e20": (
        "BatchNorm trained, lr 2e-3, 1 warm-up epoch, 20 epochs, no early stopping (how far epochs alone go)",
        long_run(20),
    ),
    "bn-lr2e-3-w1-e20-mixup": (
        "as bn-lr2e-3-w1-e20, with mixup (alpha 0.2) on top of crop and flip",
        [*long_run(20), "--augment", "crop,flip,mixup"],
    ),
    "bn-lr2e-3-w1-e20-cutmix": (
        "as bn-lr2e-3-w1-e20, with CutMix (alpha 1.0) on top of crop and flip",
        [*long_run(20), "--augment", "crop,flip,cutmix"],
    ),
    "bn-lr2e-3-w1-e30": (
        "BatchNorm trained, lr 2e-3, 1 warm-up epoch, 30 epochs (the ceiling without a teacher)",
        long_run(30),
    ),
}


def stopped_seconds(folder: Path) -> float | None:
    """The epoch seconds a stopped fine-tune already spent, or None when `folder` holds no stopped run.

    A run stopped mid-way (a session's end, Ctrl-C) keeps its config, its history and its resume
    state but has no finished `finetune` stage; `edgecls finetune --resume` continues it.
    """
    from edgecls.run import RunDir
    from edgecls.train import HISTORY_CSV, read_history

    run = RunDir(folder)
    if not (folder / "config.yaml").is_file() or run.stage("finetune") is not None:
        return None
    return sum(row.get("epoch_seconds", 0.0) for row in read_history(folder / HISTORY_CSV))


def run_variant(name: str, flags: list[str], runs_dir: Path) -> dict:
    """Run one variant through the CLI unless it already finished, or resume it if it was stopped; return its figures.

    The wall time of a resumed run is the stopped attempt's epoch seconds plus the resumed attempt's wall time (the
    stopped attempt's data loading is not counted), and its row says `resumed`; its commit is the one it resumed at.
    """
    folder = runs_dir / name
    command = [
        "edgecls", "finetune", "--data", str(CIFAR_JPEG), "--name", name, "--runs-dir", str(runs_dir), "--force",
        *pinned(flags),
    ]  # fmt: skip
    timing = folder / "wall_seconds.json"
    if not (folder / "manifest.json").exists() or not timing.exists():
        earlier = stopped_seconds(folder)
        todo = command if earlier is None else ["edgecls", "finetune", "--name", name, "--runs-dir", str(runs_dir), "--resume"]
        commit, start = git_sha(), time.perf_counter()  # the code the run starts (or resumes) with
        subprocess.run([str(Path(sys.executable).parent / todo[0]), *todo[1:]], check=True, cwd=ROOT)
        seconds = time.perf_counter() - start + (earlier or 0.0)
        record = {"wall_seconds": seconds, "commit": commit, "date": today(), "machine": machine()}
        timing.write_text(json.dumps(record | ({"resumed": True} if earlier is not None else {})))
    metrics = json.loads((folder / "metrics.json").read_text())
    history = json.loads((folder / "history.json").read_text())
    full_epochs = [row["epoch_seconds"] for row in history[1:] if "epoch_seconds" in row]  # after the head warm-up
    fastest = min(full_epochs, default=float("nan"))
    figures = {key: metrics[key] for key in ("best_val_accuracy", "test_accuracy", "epochs_run")}
    unrecorded = dict.fromkeys(("commit", "date", "machine"), "not recorded")  # timings written before rows named them
    return {"command": shlex.join(command), **figures, **unrecorded, **json.loads(timing.read_text()), "fastest_epoch": fastest}


def write_doc(rows: dict[str, dict]) -> None:
    """The recipe-study section of docs/benchmarks.md."""
    write_section("recipe", recipe_section(rows))


def recipe_section(rows: dict[str, dict]) -> str:
    """The recipe-study section's text: one row per finished variant, in the order of `VARIANTS`."""
    lines = [
        "## Fine-tuning recipe study (issue 10)",
        "",
        "- Machines: 2 cores, 24 GiB RAM, no GPU, Python 3.11.7; each row names its date, edgecls commit and CPU.",
        f"- Data: `{CIFAR_JPEG.relative_to(SHARED.parent)}` (45,000 train / 5,000 val, seed 42; all 10,000 test images).",
        "- Model: MobileNet v1 alpha 0.25 @128 px (13.3 M MACs), `full` strategy, ImageNet weights"
        " `mobilenet_2_5_224_tf_no_top.h5` from ../shared in the Keras cache; 10 epochs at batch 64 unless the row says"
        " otherwise (the defaults until 2026-12-07; `python bench/recipe.py` pins them).",
        "- Runs one after the other through the CLI; selection by validation accuracy only. Timing caveat: the study"
        " shared the 2 cores with development (test runs), so `wall time` is an upper bound; `fastest full epoch` (the"
        " quietest whole-network epoch in the run's history) is the better guide to speed on an idle machine.",
        "- Reproduce: `python bench/recipe.py` (each row's command is below).",
        "",
        "| variant | what it tests | best val acc | test acc (float) | epochs run | wall time | fastest full epoch"
        " | measured | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {VARIANTS[name][0]} | {row['best_val_accuracy']:.4f} | {row['test_accuracy']:.4f} |"
            f" {row['epochs_run']} | {row['wall_seconds'] / 60:.1f} min{' (resumed)' if row.get('resumed') else ''}"
            f" | {row['fastest_epoch']:.0f} s"
            f" | {row['date']}, {row['commit']}, {cpu_model(row['machine'])} | `{row['command']}` |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "bench-runs" / "recipe")
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), default=None)
    parser.add_argument("--write", action="store_true", help="only write the docs section from finished variants")
    args = parser.parse_args()
    if not CIFAR_JPEG.exists():
        sys.exit(f"bench/recipe.py needs {CIFAR_JPEG} (set EDGECLS_SHARED)")
    names = args.only or list(VARIANTS)
    if not args.write:
        for name in names:
            print(json.dumps({name: run_variant(name, VARIANTS[name][1], args.runs_dir)["test_accuracy"]}), flush=True)
    done = [n for n in VARIANTS if (args.runs_dir / n / "wall_seconds.json").exists()]
    recorded = record_rows("recipe", {n: run_variant(n, VARIANTS[n][1], args.runs_dir) for n in done})
    write_doc({n: recorded[n] for n in VARIANTS if n in recorded})


if __name__ == "__main__":
    main()
