"""Training-step time of MobileNet v1 0.25 @128 px under a Keras precision policy and XLA (issue 10's time budget).

Random images and labels (speed only), batch 64, 20 steps after 2 warm-up steps, tf-keras `fit`.

Usage:
    python bench/train_step_speed.py float32|mixed_bfloat16 [--jit]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tf_keras  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", choices=["float32", "mixed_bfloat16"])
    parser.add_argument("--jit", action="store_true", help="compile the train step with XLA")
    args = parser.parse_args()
    tf_keras.mixed_precision.set_global_policy(args.policy)
    base = tf_keras.applications.MobileNet(input_shape=(128, 128, 3), alpha=0.25, include_top=False, weights=None)
    outputs = tf_keras.layers.Dense(10, dtype="float32")(tf_keras.layers.GlobalAveragePooling2D()(base.output))
    model = tf_keras.Model(base.input, outputs)
    loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(tf_keras.optimizers.Adam(1e-3), loss, jit_compile=args.jit)
    rng = np.random.default_rng(0)
    images, labels = rng.random((64 * 20, 128, 128, 3), np.float32), rng.integers(0, 10, 64 * 20)
    model.fit(images[:128], labels[:128], batch_size=64, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(images, labels, batch_size=64, epochs=1, verbose=0)
    step = (time.perf_counter() - start) / 20
    print(f"{args.policy}{' + XLA' if args.jit else ''}: {step * 1000:.0f} ms/step")


if __name__ == "__main__":
    main()
