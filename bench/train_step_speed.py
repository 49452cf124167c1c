"""Training-step time of MobileNet v1 0.25 @128 px under a Keras precision policy, XLA and TensorFlow's oneDNN switch
(issue 10's time budget).

Random images and labels (speed only, fed from memory through tf.data), batch 64, 20 steps (`--steps`) after 2 warm-up
steps, tf-keras `fit`, BatchNorm training (`--batchnorm frozen`: the BatchNorm layers frozen, so they run with their
moving statistics, as `train.batchnorm: frozen` does). The steps are timed inside one `fit` call by a callback (median
and mean of the batch-to-batch times), not around `fit`: a short `fit` call can end in an idle wait of about 2.5 s after
its last batch, which doubled the per-step figure of some calls (docs/benchmarks.md, "Faster training steps?").
`--profile` then traces 10 more steps with TensorFlow's profiler and prints the op types that take the time (the sum
of the kernels' times on TensorFlow's executor threads, per step, and each type's share).
`--onednn on|off` sets `TF_ENABLE_ONEDNN_OPTS` before TensorFlow is imported; `default` leaves TensorFlow's own
choice, which is on only for CPUs with AVX512_VNNI, AVX512_BF16 or AMX (edgecls itself turns it on: edgecls/__init__.py).

Usage:
    python bench/train_step_speed.py float32|mixed_bfloat16 [--jit] [--onednn default|on|off] [--batchnorm train|frozen]
        [--steps N] [--profile]
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", choices=["float32", "mixed_bfloat16"])
    parser.add_argument("--jit", action="store_true", help="compile the train step with XLA")
    parser.add_argument("--onednn", choices=["default", "on", "off"], default="default", help="TF_ENABLE_ONEDNN_OPTS")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--batchnorm", choices=["train", "frozen"], default="train", help="BatchNorm layers trained or frozen")
    parser.add_argument("--profile", action="store_true", help="then print the op types that take a step's time")
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
    batch_ends: list[float] = []
    timer = tf_keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: batch_ends.append(time.perf_counter()))
    model.fit(batches, steps_per_epoch=args.steps + 1, epochs=1, verbose=0, callbacks=[timer])
    steps = np.diff(batch_ends) * 1000  # the first batch of a call (its setup) is left out
    print(
        f"{args.policy}{' + XLA' if args.jit else ''}, oneDNN {args.onednn}, BatchNorm {args.batchnorm}: "
        f"{np.median(steps):.0f} ms/step median, {steps.mean():.0f} mean, "
        f"{steps.min():.0f}-{steps.max():.0f} over {len(steps)} steps"
    )
    if args.profile:
        print_op_times(model, batches)


def print_op_times(model, batches, steps: int = 10, top: int = 12) -> None:
    """Trace `steps` training steps with TensorFlow's profiler and print the op types that take the time."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        model.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0)
        tf.profiler.experimental.stop()
        times = op_type_times(next(Path(logdir).rglob("*.xplane.pb")))
    total = sum(times.values())
    print(f"kernel time per step, summed over TensorFlow's executor threads: {total / steps:.0f} ms")
    for op, ms in times.most_common(top):
        print(f"  {op:48s} {ms / steps:6.1f} ms  {ms / total:6.1%}")


def op_type_times(xplane_file: Path) -> collections.Counter:
    """Milliseconds by op type (`_MklNativeConv2D`, `Relu6Grad`, ...) in one profiler trace (an XSpace proto).

    The kernels of a traced `tf.function` are events named `scope/op:OpType` on the host plane's `tf_Compute` lines.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace.FromString(xplane_file.read_bytes())
    host = next(plane for plane in space.planes if plane.name == "/host:CPU")
    times: collections.Counter = collections.Counter()
    for line in host.lines:
        if not line.name.startswith("tf_Compute"):
            continue
        for event in line.events:
            name = host.event_metadata[event.metadata_id].name
            if ":" in name and not name.startswith("ExecutorState"):
                times[name.rsplit(":", 1)[1]] += event.duration_ps / 1e9
    return times


if __name__ == "__main__":
    main()
