"""The one definition of how pixels become a backbone's input, as `keras.applications` defines it.

Two modes cover every edgecls backbone (each family's `BackboneSpec.preprocessing` names one):

- `tf` (MobileNet v1/v2/v3): x / 127.5 - 1, to [-1, 1];
- `caffe` (ResNet50): RGB to BGR, then minus the ImageNet mean per channel.

This module needs only NumPy (TensorFlow only inside `normalize_tf`), because `edgecls.worker` runs
it on devices: `bench` copies it there beside the worker. The tf.data pipeline, the export metadata,
the firmware header and the worker all read it from here; a test checks it against `keras.applications`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)
MODES = ("tf", "caffe")


def _check(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"`mode` must be `tf` or `caffe`; got {mode!r}.")


def normalize_numpy(images: np.ndarray, mode: str) -> np.ndarray:
    """uint8 (or float) RGB pixels in [0, 255] to the backbone's float32 input."""
    _check(mode)
    images = np.asarray(images, np.float32)
    if mode == "tf":
        return images / 127.5 - 1.0
    return images[..., ::-1] - np.asarray(IMAGENET_MEAN_BGR, np.float32)


def normalize_tf(images, mode: str):
    """TensorFlow twin of `normalize_numpy`, for tf.data pipelines."""
    import tensorflow as tf

    _check(mode)
    images = tf.cast(images, tf.float32)
    if mode == "tf":
        return images / 127.5 - 1.0
    return images[..., ::-1] - tf.constant(IMAGENET_MEAN_BGR, tf.float32)


def describe(mode: str) -> dict[str, Any]:
    """The normalization as data, for model-file metadata: enough for any runtime to reproduce it."""
    _check(mode)
    if mode == "tf":
        return {"mode": "tf", "formula": "x / 127.5 - 1", "channel_order": "RGB", "scale": 1 / 127.5, "offset": -1.0}
    return {"mode": "caffe", "formula": "RGB->BGR, x - mean", "channel_order": "BGR", "mean_bgr": list(IMAGENET_MEAN_BGR)}


def formula(mode: str) -> str:
    """The normalization in one line for a C header comment (`normalized(p) = ...`)."""
    _check(mode)
    return "p / 127.5 - 1" if mode == "tf" else "channels reversed to BGR, then p - (103.939, 116.779, 123.68)"
