"""Parameter and multiply-accumulate counts of a Keras model.

MACs count the convolutions and Dense layers (where nearly all compute is);
BatchNorm, activations, pooling and additions are left out, as in the papers.
"""

from __future__ import annotations

from typing import Any


def _shape(tensor_shape) -> list[int]:
    shape = tensor_shape[0] if isinstance(tensor_shape, list) else tensor_shape
    return [int(d) for d in shape[1:]]


def layer_macs(layer) -> int:
    """MACs of one layer for a single image (0 for layers without weights)."""
    import tf_keras

    kind = tf_keras.layers
    if isinstance(layer, kind.DepthwiseConv2D):
        out_h, out_w, out_c = _shape(layer.output_shape)
        kh, kw = layer.kernel_size
        return out_h * out_w * kh * kw * out_c
    if isinstance(layer, kind.Conv2D):
        out_h, out_w, out_c = _shape(layer.output_shape)
        in_c = _shape(layer.input_shape)[-1]
        kh, kw = layer.kernel_size
        return out_h * out_w * kh * kw * in_c * out_c // layer.groups
    if isinstance(layer, kind.Dense):
        return int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
    if hasattr(layer, "layer"):  # pruning/quantization wrappers
        return layer_macs(layer.layer)
    return 0


def model_stats(model) -> dict[str, Any]:
    """`params`, `trainable_params` and `macs` (per image) of `model`."""
    import numpy as np

    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return {
        "params": int(model.count_params()),
        "trainable_params": trainable,
        "macs": int(sum(layer_macs(layer) for layer in model.layers)),
    }
