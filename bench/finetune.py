"""Benchmark of `edgecls finetune` (issue 2) on the full real CIFAR-10 from ../shared.

Runs the three transfer strategies through the CLI on 45,000/5,000/10,000
train/val/test images, then compares the training throughput of the edgecls
pipeline with a plain `model.fit` on in-memory arrays, and writes the
"finetune" section of docs/benchmarks.md.

Usage: python bench/finetune.py [--epochs 6] [--runs-dir bench-runs]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time

from common import CIFAR_JPEG, ROOT, SHARED, git_sha, machine, today, write_section

STRATEGIES = {
    "frozen": ["--strategy", "frozen"],
    "partial": ["--strategy", "partial", "--unfreeze", "5", "--warmup-epochs", "1"],
    "full": ["--strategy", "full", "--warmup-epochs", "1"],
}


def run_strategy(name: str, extra: list[str], epochs: int, runs_dir: str) -> dict:
    command = [
        "edgecls", "finetune", "--data", str(CIFAR_JPEG), "--epochs", str(epochs),
        "--name", f"bench-{name}", "--runs-dir", runs_dir, "--force", *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    metrics = json.loads((ROOT / runs_dir / f"bench-{name}" / "metrics.json").read_text())
    return {"command": shlex.join(command), "wall": wall, **metrics}


def throughput(batch_size: int = 64, images: int = 10000) -> dict:
    """Images/s of epoch 2 for the same model trained (full) three ways."""
    import numpy as np
    import tf_keras

    from edgecls.config import DataConfig, TrainConfig
    from edgecls.data import load_dataset
    from edgecls.data.pipeline import preprocess_numpy, train_dataset
    from edgecls.models import create_model
    from edgecls.train import EpochTimer, compile_model, set_trainable

    data = load_dataset(
        DataConfig(source=str(CIFAR_JPEG), limit_per_class=images // 10, val_fraction=0.0, test_limit_per_class=1),
        128,
        0,
    )
    x, y = data.train.images, data.train.labels
    cfg = TrainConfig()

    def fit(inputs, labels=None):
        tf_keras.utils.set_random_seed(0)
        model, _ = create_model("mobilenet", input_size=128, weights="imagenet")
        set_trainable(model, "mobilenet", "full", unfreeze=1, batchnorm="frozen")
        compile_model(model, cfg, 1e-4)
        timer = EpochTimer()
        history = model.fit(
            inputs, labels, batch_size=None if labels is None else batch_size, epochs=3, callbacks=[timer], verbose=2
        )
        seconds = sorted(history.history["epoch_seconds"][1:])[0]
        return len(x) / seconds

    plain = fit(preprocess_numpy(x, "tf"), tf_keras.utils.to_categorical(y, 10).astype(np.float32))
    no_aug = fit(train_dataset(x, y, num_classes=10, batch_size=batch_size, mode="tf", augment=(), seed=0))
    aug = fit(train_dataset(x, y, num_classes=10, batch_size=batch_size, mode="tf", augment=("crop", "flip"), seed=0))
    return {"plain": plain, "pipeline": no_aug, "pipeline_aug": aug, "images": len(x), "batch": batch_size}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--runs-dir", default="bench-runs")
    parser.add_argument("--only", choices=["strategies", "throughput"], default=None)
    args = parser.parse_args()
    if not CIFAR_JPEG.exists():
        sys.exit(f"bench/finetune.py needs {CIFAR_JPEG} (set EDGECLS_SHARED)")
    rows = [] if args.only == "throughput" else [run_strategy(n, e, args.epochs, args.runs_dir) for n, e in STRATEGIES.items()]
    speed = None if args.only == "strategies" else throughput()
    lines = [
        "## Fine-tuning (`edgecls finetune`, issue 2)",
        "",
        f"- Date: {today()}; edgecls commit {git_sha()}; machine: {machine()}.",
        f"- Data: `{CIFAR_JPEG.relative_to(SHARED.parent)}` (JPEG re-encoding of CIFAR-10: 45,000 train /"
        " 5,000 val carved from the 50,000 train images, seed 42; all 10,000 test images).",
        "- Weights: `mobilenet_2_5_224_tf_no_top.h5` (official Keras MobileNet v1 alpha 0.25, from ../shared,"
        " copied into the Keras cache); input 128 px, so edgecls initialises from the 224 px file.",
        f"- Reproduce: `python bench/finetune.py --epochs {args.epochs}` (with `KERAS_HOME` holding the weights).",
        "",
    ]
    if rows:
        lines += [
            "| strategy | test accuracy | best val accuracy | epochs | wall time | train images/s | command |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, row in zip(STRATEGIES, rows, strict=False):
            lines.append(
                f"| {name} | {row['test_accuracy']:.4f} | {row['best_val_accuracy']:.4f} | {row['epochs_run']} |"
                f" {row['wall'] / 60:.1f} min | {row['train_images_per_second']:.0f} | `{row['command']}` |"
            )
        lines.append("")
    if speed:
        lines += [
            f"Training throughput, full fine-tuning, batch {speed['batch']}, {speed['images']} images, best of"
            " epochs 2-3 (`python bench/finetune.py --only throughput`):",
            "",
            "| input | images/s | ratio to plain fit |",
            "|---|---|---|",
            f"| plain `model.fit` on preprocessed float32 NumPy arrays | {speed['plain']:.0f} | 1.00 |",
            f"| edgecls tf.data pipeline, no augmentation | {speed['pipeline']:.0f} | {speed['pipeline'] / speed['plain']:.2f} |",
            f"| edgecls tf.data pipeline, crop+flip augmentation (default) | {speed['pipeline_aug']:.0f} |"
            f" {speed['pipeline_aug'] / speed['plain']:.2f} |",
        ]
    write_section("finetune", "\n".join(lines))


if __name__ == "__main__":
    main()
