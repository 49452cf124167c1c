"""Does a finished run lose accuracy to lagging BatchNorm statistics? (issue 10, the MobileNetV2 teacher)

Keras' MobileNetV2 keeps BatchNorm moving averages with momentum 0.999 (a time constant of
1,000 steps, more than a CIFAR-10 epoch at batch 64), MobileNet v1 with 0.99. During a short
fine-tuning with BatchNorm trained, the averages trail the weights and the model evaluates
worse than it trains. This script re-estimates them on 12,800 un-augmented training images
(`edgecls.train.reestimate_batchnorm`, the weights untouched; batches in random order: a sorted
selection gives one-class batches, whose variance is too small) and prints the validation and test
accuracy before and after. `train.batchnorm_reestimate` does the same at the end of a fine-tune.

Usage:
    python bench/bn_reestimate.py RUN [--images 12800]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from common import ROOT

sys.path.insert(0, str(ROOT))
from edgecls.config import load_config  # noqa: E402
from edgecls.data import load_dataset  # noqa: E402
from edgecls.metrics import predict_scores  # noqa: E402
from edgecls.run import RunDir  # noqa: E402
from edgecls.train import reestimate_batchnorm  # noqa: E402


def accuracy(model, split, mode: str) -> float:
    return float(np.mean(predict_scores(model, split.images, mode=mode, batch_size=256).argmax(1) == split.labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--images", type=int, default=12_800)
    args = parser.parse_args()
    run = RunDir(args.run)
    mode = run.finetune_record().preprocessing
    model, _ = run.load_model("finetune")
    cfg = load_config(run.file("config.yaml"))
    data = load_dataset(cfg.data, cfg.model.input_size, cfg.run.seed)
    print(f"before: val {accuracy(model, data.val, mode):.4f}, test {accuracy(model, data.test, mode):.4f}", flush=True)
    start = time.perf_counter()
    chosen = np.random.default_rng(0).permutation(len(data.train))[: args.images]  # random order: mixed-class batches
    used = reestimate_batchnorm(model, data.train.images[chosen], mode=mode, batch_size=64)
    seconds = time.perf_counter() - start
    print(f"after re-estimating on {used} training images ({seconds:.0f} s): val {accuracy(model, data.val, mode):.4f},"
          f" test {accuracy(model, data.test, mode):.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
