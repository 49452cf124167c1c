"""Streaming input (issue 14): training throughput from the on-disk cache vs in memory, on the full CIFAR-10.

Trains the default MCU model (MobileNet v1 0.25 @128 px) on the full JPEG CIFAR-10 (45,000 training
images) twice with the same seed: `data.mode=memory` and `data.mode=stream` (cache removed first, so
the first epoch's cost includes writing it). `frozen` strategy: only the head trains, so a step is as
cheap as it gets and the input pipeline is what a slow stream would show. Also times the input
pipeline alone (one epoch of `training_dataset`, no model) in both modes. Run on a quiet machine.
Writes the "stream" section of docs/benchmarks.md.

Usage: python bench/stream.py [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import time

from common import CIFAR_JPEG, ROOT, git_sha, machine, run_edgecls, today, write_section

RUNS = ROOT / "bench-runs" / "stream"
CACHE = RUNS / "cache"


def pipeline_images_per_second(mode: str) -> float:
    """Images/s of one epoch of the training input pipeline alone (decode/gather, augment, preprocess, batch)."""
    from edgecls.config import load_config
    from edgecls.data import load_dataset
    from edgecls.data.pipeline import training_dataset

    cfg = load_config(RUNS / f"stream-{mode}" / "config.yaml")
    data = load_dataset(cfg.data, cfg.model.input_size, cfg.run.seed)
    dataset = training_dataset(data.train, num_classes=data.num_classes, batch_size=cfg.data.batch_size, mode="tf",
                               augment=cfg.data.augment, seed=cfg.run.seed)  # fmt: skip
    for _ in dataset.take(20):  # warm up the threads and buffers
        pass
    start = time.perf_counter()
    count = sum(int(images.shape[0]) for images, _ in dataset)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    shutil.rmtree(CACHE, ignore_errors=True)
    commands, results = [], {}
    for mode in ("memory", "stream"):
        command = ["edgecls", "finetune", "--data", str(CIFAR_JPEG), "--strategy", "frozen", "--epochs", str(args.epochs),
                   "--name", f"stream-{mode}", "--runs-dir", str(RUNS), "--force", "--set", f"data.mode={mode}",
                   "--set", f"data.cache_dir={CACHE}"]  # fmt: skip
        wall = run_edgecls([command])["finetune"]
        commands.append(command)
        run = RUNS / f"stream-{mode}"
        entry = json.loads((run / "manifest.json").read_text())["stages"]["finetune"]
        history = json.loads((run / "history.json").read_text())
        seconds = [row["epoch_seconds"] for row in history]
        results[mode] = {"wall": wall, "first": seconds[0], "steady": statistics.median(seconds[1:]),
                         "accuracy": entry["metrics"]["test_accuracy"], "data": entry["inputs"]["data"],
                         "pipeline": pipeline_images_per_second(mode)}  # fmt: skip
    images = results["memory"]["data"]["sizes"]["train"]
    lines = [
        "| mode | first epoch s | steady epoch s (median of the rest) | steady images/s | input pipeline alone, images/s |"
        " cache written s | test accuracy | finetune wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, r in results.items():
        cache = r["data"].get("cache_seconds", "")
        lines.append(f"| {mode} | {r['first']:.1f} | {r['steady']:.1f} | {images / r['steady']:.0f} | {r['pipeline']:.0f} |"
                     f" {cache} | {r['accuracy']:.4f} | {r['wall']:.0f} |")  # fmt: skip
    ratio = results["memory"]["steady"] / results["stream"]["steady"]
    body = [
        "## Streaming input: on-disk cache vs memory (issue 14)",
        "",
        f"- Date: {today()}; edgecls commit {git_sha()}; machine: {machine()}; nothing else running.",
        f"- Data: full JPEG CIFAR-10 from ../shared ({images:,} training images after the validation split), 128 px.",
        f"- Reproduce: `python bench/stream.py --epochs {args.epochs}`, which runs:",
        *[f"  - `{shlex.join(c)}`" for c in commands],
        "- `stream` reads the training split from the cache of decoded 128-px images (`Dataset.save` shards, read back"
        ' interleaved, 512 MiB shuffle buffer); its first run decodes the JPEGs once into the cache ("cache written s",'
        " before the first epoch). Frozen strategy: the cheapest step, so the input pipeline shows.",
        "",
        *lines,
        "",
        f"Steady-state streaming throughput / in-memory: **{ratio:.2f}** (target ≥ 0.9).",
    ]
    write_section("stream", "\n".join(body))


if __name__ == "__main__":
    main()
