"""A cheap baseline for every fine-tune: softmax regression on the raw pixels.

A network fine-tuned from ImageNet must never lose to a linear model on raw pixels;
on a small or easy data set (digits, simple shapes) it can, when it is given too few
optimizer steps (issue 10 measured 0.929 against 0.995). The finetune stage fits this
baseline on the same training images, scores it on the same test split, records it in
`metrics.json` and warns when the fine-tuned model does not beat it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

PIXELS = 32  # images are shrunk to at most 32x32: 3,072 features, like CIFAR's native size
MAX_IMAGES = 20_000  # a seeded subset above this: the baseline stays a few seconds
MIN_STEPS = 2_000
MAX_EPOCHS = 200
L2 = 1e-4


def pixel_features(images: np.ndarray, size: int, chunk: int = 1024) -> np.ndarray:
    """uint8 [N, H, W, 3] images as float32 [N, size*size*3] rows in [0, 1] (area-averaged when shrunk).

    Shrunk `chunk` images at a time: resizing converts to float32, 4x the uint8 images' memory.
    """
    rows = np.empty((len(images), size * size * images.shape[3]), np.float32)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk]
        if part.shape[1] != size:
            part = tf.image.resize(part, (size, size), method="area").numpy()
        rows[start : start + chunk] = part.reshape(len(part), -1) / 255.0
    return rows


def fit_softmax_regression(features: np.ndarray, labels: np.ndarray, num_classes: int, *, seed: int):
    """A Keras softmax regression (one Dense layer, L2) on standardized features; returns a predict function."""
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-3
    tf_keras.utils.set_random_seed(seed)
    model = tf_keras.Sequential([tf_keras.layers.Dense(num_classes, kernel_regularizer=tf_keras.regularizers.l2(L2))])
    model.compile(tf_keras.optimizers.Adam(1e-3), tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    batch = 128
    epochs = min(MAX_EPOCHS, -(-MIN_STEPS // -(-len(features) // batch)))
    model.fit((features - mean) / std, labels, batch_size=batch, epochs=epochs, verbose=0)
    return lambda rows: model.predict((rows - mean) / std, batch_size=1024, verbose=0).argmax(axis=1)


def raw_pixel_baseline(train, test, num_classes: int, *, seed: int) -> dict[str, Any]:
    """Test accuracy of a softmax regression on raw pixels, trained on (at most 20,000 of) `train`.

    Args:
        train, test: Decoded splits (uint8 images at the model's input size).
        num_classes: Classes of the data set.
        seed: Seeds the subset and the initialization.

    Returns:
        `kind`, `pixels`, `train_images`, `test_accuracy` and `seconds`, or `skipped` with the
        reason when the training split is not in memory (streamed).
    """
    if not hasattr(train, "images"):
        return {"kind": "softmax regression on raw pixels", "skipped": "the training split is streamed, not in memory"}
    start = time.perf_counter()
    index = np.arange(len(train))
    if len(index) > MAX_IMAGES:
        index = np.sort(np.random.default_rng(seed).choice(index, MAX_IMAGES, replace=False))
    size = min(PIXELS, train.images.shape[1])
    predict = fit_softmax_regression(pixel_features(train.images[index], size), train.labels[index], num_classes, seed=seed)
    accuracy = float(np.mean(predict(pixel_features(test.images, size)) == test.labels))
    return {
        "kind": "softmax regression on raw pixels",
        "pixels": f"{size}x{size}x3",
        "train_images": int(len(index)),
        "test_accuracy": round(accuracy, 4),
        "seconds": round(time.perf_counter() - start, 1),
    }


def baseline_warning(test_accuracy: float, baseline: dict[str, Any]) -> str | None:
    """A one-line warning when the fine-tuned model does not beat the baseline, else None."""
    reference = baseline.get("test_accuracy")
    if reference is None or test_accuracy > reference:
        return None
    return (
        f"the fine-tuned model ({test_accuracy:.4f} test accuracy) does not beat a {baseline['kind']} ({reference:.4f}):"
        " give it more optimizer steps (leave `--epochs` unset, or raise `train.min_steps`)."
    )
