"""Training-step time of MobileNet v1 0.25 @128 px under a Keras precision policy, XLA and TensorFlow's oneDNN switch
(issue 10's time budget).

Random images and labels (speed only, fed from memory through tf.data), batch 64, 20 steps (`--steps`) after 2 warm-up
steps, tf-keras `fit`, BatchNorm training (`--batchnorm frozen`: the BatchNorm layers frozen, so they run with their
moving statistics, as `train.batchnorm: frozen` does).
`--onednn on|off` sets `TF_ENABLE_ONEDNN_OPTS` before TensorFlow is imported; `default` leaves TensorFlow's own
choice, which is on only for CPUs with AVX512_VNNI, AVX512_BF16 or AMX (edgecls itself turns it on: edgecls/__init__.py).

Usage:
    python bench/train_step_speed.py float32|mixed_bfloat16 [--jit] [--onednn default|on|off] [--batchnorm train|frozen]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", choices=["float32", "mixed_bfloat16"])
    parser.add_argument("--jit", action="store_true", help="compile the train step with XLA")
    parser.add_argument("--onednn", choices=["default", "on", "off"], default="default", help="TF_ENABLE_ONEDNN_OPTS")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--batchnorm", choices=["train", "frozen"], default="train", help="BatchNorm layers trained or frozen")
    args = parser.parse_args()
    if args.onednn != "default":  # read once, when TensorFlow is imported
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if args.onednn == "on" else "0"
    else:
        os.environ.pop("TF_ENABLE_ONEDNN_OPTS", None)
    import numpy as np
    import tensorflow as tf
    import tf_keras

    tf_keras.mixed_precision.set_global_policy(args.policy)
    base = tf_keras.applications.MobileNet(input_shape=(128, 128, 3), alpha=0.25, include_top=False, weights=None)
    outputs = tf_keras.layers.Dense(10, dtype="float32")(tf_keras.layers.GlobalAveragePooling2D()(base.output))
    model = tf_keras.Model(base.input, outputs)
    for layer in model.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.trainable = args.batchnorm == "train"
    loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(tf_keras.optimizers.Adam(1e-3), loss, jit_compile=args.jit)
    rng = np.random.default_rng(0)
    images, labels = rng.random((64 * 4, 128, 128, 3), np.float32), rng.integers(0, 10, 64 * 4)
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(64).repeat().prefetch(2)  # no copy in the timing
    model.fit(batches, steps_per_epoch=2, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(batches, steps_per_epoch=args.steps, epochs=1, verbose=0)
    step = (time.perf_counter() - start) / args.steps
    print(
        f"{args.policy}{' + XLA' if args.jit else ''}, oneDNN {args.onednn}, BatchNorm {args.batchnorm}: {step * 1000:.0f} ms/step"
    )


if __name__ == "__main__":
    main()
