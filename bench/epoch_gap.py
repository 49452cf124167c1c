"""Stalls between epochs: Keras' `fit` over edgecls' in-memory training pipeline, finite or endless.

From a finite dataset `fit` makes a new iterator at every epoch, which instantiates the
pipeline's map function again; from an endless one (`edgecls.data.pipeline.endless`, with
`steps_per_epoch`) it makes one per `fit`. This script times the gap between one epoch's end
and the next one's start both ways. The model is a one-convolution network, so that the
pipeline, not the network, sets the pace; the images are random (speed only) at the default
job's size: 45,000 training images of 128 px, batches of 64, 5,000 validation images.

Usage:
    python bench/epoch_gap.py [--images 45000] [--size 128] [--epochs 6]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from edgecls.data.pipeline import endless, eval_dataset, train_dataset  # edgecls sets TensorFlow's oneDNN switch first

BATCH = 64


def tiny_model(size: int):
    """One strided convolution and a softmax: a step costs far less than the pipeline's batch."""
    import tf_keras

    inputs = tf_keras.Input((size, size, 3))
    x = tf_keras.layers.Conv2D(4, 3, strides=4)(inputs)
    outputs = tf_keras.layers.Dense(10, activation="softmax")(tf_keras.layers.GlobalAveragePooling2D()(x))
    model = tf_keras.Model(inputs, outputs)
    model.compile("adam", "categorical_crossentropy")
    return model


def gaps(images: np.ndarray, labels: np.ndarray, epochs: int, *, repeat: bool) -> tuple[list[float], list[float]]:
    """(seconds between an epoch's end and the next one's start, seconds of each epoch) of one `fit`."""
    import tf_keras

    train = train_dataset(images, labels, num_classes=10, batch_size=BATCH, mode="tf", augment=("crop", "flip"), seed=42)
    steps = None
    if repeat:
        train, steps = endless(train, len(images), BATCH)
    val = eval_dataset(images[:5000], labels[:5000], num_classes=10, batch_size=BATCH, mode="tf")
    starts, ends = [], []
    marks = tf_keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: starts.append(time.perf_counter()),
                                              on_epoch_end=lambda epoch, logs: ends.append(time.perf_counter()))  # fmt: skip
    tiny_model(images.shape[1]).fit(train, steps_per_epoch=steps, validation_data=val, epochs=epochs, verbose=0,
                                    callbacks=[marks])  # fmt: skip
    between = [start - end for end, start in zip(ends, starts[1:], strict=False)]
    return between, [end - start for start, end in zip(starts, ends, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=45_000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    images = np.random.default_rng(0).integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
    labels = np.arange(args.images) % 10
    for repeat in (False, True):
        between, epochs = gaps(images, labels, args.epochs, repeat=repeat)
        name = "endless (one iterator per fit)" if repeat else "finite (one iterator per epoch)"
        print(f"{name}: gaps {', '.join(f'{g:.1f}' for g in between)} s; epochs {min(epochs):.1f}-{max(epochs):.1f} s")


if __name__ == "__main__":
    main()
