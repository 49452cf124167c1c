"""Per-tensor quantization-aware training: BatchNorm folding and a TFMOT scheme that keeps weights quantized.

TFMOT's default 8-bit QAT fake-quantizes a convolution's kernel before the
BatchNorm that follows it; with per-channel scales the converter folds the
BatchNorm scale into each channel's scale afterwards, but one per-tensor scale
cannot absorb a per-channel factor, so the converter leaves such weights in
float. Per-tensor QAT therefore runs on a model whose (inference-mode)
BatchNorm is folded into the convolutions first.

Two fixes to TFMOT's per-tensor scheme make that folded model train as it will
run:

- its `LayerReLUQuantize` transform gives any Conv2D/DepthwiseConv2D followed
  by a ReLU a no-op quantize config, so those kernels would train and convert
  unquantized (the converter then quantizes them per channel); here the
  convolution keeps its weight quantizer and only loses its output
  fake-quant, as TFMOT does for Conv+BatchNorm+ReLU;
- its prune-preserving registry only accepts per-channel Conv2D configs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tf_keras
from tensorflow_model_optimization.python.core.quantization.keras import quantize_aware_activation
from tensorflow_model_optimization.python.core.quantization.keras import utils as quantize_utils
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
    default_8bit_prune_preserve_quantize_scheme as preserve_scheme,
)
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
    prune_preserve_quantize_registry as preserve_registry,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_layout_transform as default_layout,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_registry as default_registry,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_scheme as default_scheme,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_transforms as default_transforms,
)
from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import model_transformer
from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations.transforms import (
    LayerPattern,
    Transform,
)


def _foldable_pairs(model) -> dict[str, str]:
    """{BatchNormalization name: convolution name} for each BN that is a convolution's only consumer.

    Read from the model's own config: a layer shared with another model (as
    TFMOT's clones leave them) has inbound nodes from both.
    """
    inbound = {
        layer["name"]: [entry[0] for node in layer["inbound_nodes"] for entry in node] for layer in model.get_config()["layers"]
    }
    consumers: dict[str, list[str]] = {}
    for name, sources in inbound.items():
        for source in sources:
            consumers.setdefault(source, []).append(name)
    pairs = {}
    for name, sources in inbound.items():
        layer = model.get_layer(name)
        if not isinstance(layer, tf_keras.layers.BatchNormalization) or len(sources) != 1:
            continue
        conv = model.get_layer(sources[0])
        folds = isinstance(conv, (tf_keras.layers.Conv2D, tf_keras.layers.DepthwiseConv2D)) and layer.axis in ([-1], [3])
        if folds and consumers[conv.name] == [name] and conv.activation is tf_keras.activations.linear:
            pairs[name] = conv.name
    return pairs


def _folded_weights(conv, bn) -> list[np.ndarray]:
    """The kernel and bias of `conv` followed by `bn` (inference mode) as one convolution."""
    kernel = conv.get_weights()[0]
    bias = conv.bias.numpy() if conv.use_bias else np.zeros(bn.moving_mean.shape, kernel.dtype)
    gamma = bn.gamma.numpy() if bn.scale else 1.0
    beta = bn.beta.numpy() if bn.center else 0.0
    scale = gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    if isinstance(conv, tf_keras.layers.DepthwiseConv2D):
        kernel = kernel * scale.reshape(1, 1, kernel.shape[2], kernel.shape[3])
    else:
        kernel = kernel * scale
    return [kernel.astype(np.float32), ((bias - bn.moving_mean.numpy()) * scale + beta).astype(np.float32)]


def fold_batchnorm(model):
    """A copy of `model` with every BatchNormalization folded into the convolution before it.

    Exact for BatchNorm in inference mode (how fine-tuning and optimize run
    pretrained backbones). Needed for per-tensor QAT: TFMOT fake-quantizes the
    unfolded kernel, and a per-output-channel BatchNorm scale cannot be folded
    into one per-tensor weight scale afterwards, so the converter would keep
    those weights in float.
    """
    pairs = _foldable_pairs(model)
    if not pairs:
        return model
    config = model.get_config()
    layers = []
    for layer in config["layers"]:
        if layer["name"] in pairs:
            continue
        if layer["name"] in pairs.values():
            layer["config"]["use_bias"] = True
        layers.append(_rewire(layer, pairs))
    config["layers"] = layers
    config["output_layers"] = _rewire(config["output_layers"], pairs)
    folded = tf_keras.Model.from_config(config)
    batchnorm_of = {conv: bn for bn, conv in pairs.items()}
    for layer in folded.layers:
        source = model.get_layer(layer.name)
        if layer.name in batchnorm_of:
            layer.set_weights(_folded_weights(source, model.get_layer(batchnorm_of[layer.name])))
        else:
            layer.set_weights(source.get_weights())
    return folded


def _rewire(node: Any, renamed: dict[str, str]) -> Any:
    """`node` (a layer config fragment) with references to folded BatchNorm layers pointed at their convolutions."""
    if isinstance(node, dict):
        return {key: _rewire(value, renamed) for key, value in node.items()}
    if isinstance(node, list):
        if node and isinstance(node[0], str) and node[0] in renamed:
            return [renamed[node[0]], *node[1:]]
        return [_rewire(value, renamed) for value in node]
    return node


class ConvReLUQuantize(Transform):
    """Conv2D/DepthwiseConv2D + ReLU: no fake-quant between them, kernel still quantized."""

    def pattern(self):
        return LayerPattern("ReLU", inputs=[LayerPattern("Conv2D|DepthwiseConv2D", config={"activation": "linear"})])

    def replacement(self, match_layer):
        conv = match_layer.input_layers[0]
        if "quantize_config" not in conv.metadata:  # a user's own QuantizeConfig is left alone, as TFMOT does
            no_op = quantize_aware_activation.NoOpActivation()
            conv.layer["config"]["activation"] = quantize_utils.serialize_activation(no_op, use_legacy_format=True)
        return match_layer

    def custom_objects(self):
        return {"NoOpActivation": quantize_aware_activation.NoOpActivation}


class ConvReluActivationQuantize(ConvReLUQuantize):
    """The same for `Activation('relu')` layers."""

    def pattern(self):
        return LayerPattern(
            "Activation",
            config={"activation": "relu"},
            inputs=[LayerPattern("Conv2D|DepthwiseConv2D", config={"activation": "linear"})],
        )


class AddDenseReLUQuantize(default_transforms.LayerReLUQuantize):
    """TFMOT's transform, for Add and Dense only (convolutions are handled above)."""

    def pattern(self):
        return LayerPattern("ReLU", inputs=[LayerPattern("Add|Dense")])


class AddDenseReluActivationQuantize(default_transforms.LayerReLUQuantize):
    """The same for `Activation('relu')` layers."""

    def pattern(self):
        return LayerPattern("Activation", config={"activation": "relu"}, inputs=[LayerPattern("Add|Dense")])


class PerTensorLayoutTransform(default_layout.Default8BitQuantizeLayoutTransform):
    """TFMOT's default 8-bit layout transforms with the convolution + ReLU fix.

    The list is TFMOT 0.8.1's own, in its order, with its two ReLU transforms
    replaced: TFMOT builds it inside `apply`, so it cannot be reused in part.
    """

    def apply(self, model, layer_quantize_map):
        transforms = [
            default_transforms.InputLayerQuantize(),
            default_transforms.SeparableConv1DQuantize(),
            default_transforms.SeparableConvQuantize(),
            default_transforms.Conv2DReshapeBatchNormReLUQuantize(),
            default_transforms.Conv2DReshapeBatchNormActivationQuantize(),
            default_transforms.Conv2DBatchNormReLUQuantize(),
            default_transforms.Conv2DBatchNormActivationQuantize(),
            default_transforms.Conv2DReshapeBatchNormQuantize(),
            default_transforms.Conv2DBatchNormQuantize(),
            default_transforms.ConcatTransform6Inputs(),
            default_transforms.ConcatTransform5Inputs(),
            default_transforms.ConcatTransform4Inputs(),
            default_transforms.ConcatTransform3Inputs(),
            default_transforms.ConcatTransform(),
            default_transforms.DenseBatchNormQuantize(),
            default_transforms.DenseBatchNormReLUQuantize(),
            default_transforms.DenseBatchNormActivationQuantize(),
            ConvReLUQuantize(),
            ConvReluActivationQuantize(),
            AddDenseReLUQuantize(),
            AddDenseReluActivationQuantize(),
        ]
        return model_transformer.ModelTransformer(model, transforms, set(layer_quantize_map.keys()), layer_quantize_map).transform()


class PerTensorScheme(default_scheme.Default8BitQuantizeScheme):
    """TFMOT's default 8-bit scheme with per-tensor weights and the layout fix."""

    def __init__(self):
        super().__init__(disable_per_axis=True)

    def get_layout_transformer(self):
        return PerTensorLayoutTransform()


class PerTensorPrunePreserveRegistry(preserve_registry.Default8bitPrunePreserveQuantizeRegistry):
    """TFMOT's prune-preserving registry over the per-tensor default registry."""

    _LAYERS_CONFIG_MAP = {
        **preserve_registry.PrunePreserveQuantizeRegistry._LAYERS_CONFIG_MAP,
        tf_keras.layers.Conv2D: preserve_registry._PrunePreserveInfo(["kernel"], ["Default8BitQuantizeConfig"]),
    }

    def get_quantize_config(self, layer):
        config = default_registry.Default8BitQuantizeRegistry(disable_per_axis=True).get_quantize_config(layer)
        return self.apply_sparsity_preserve_quantize_config(layer, config)


class PerTensorPrunePreserveScheme(preserve_scheme.Default8BitPrunePreserveQuantizeScheme):
    """Prune-preserving QAT with per-tensor weights and the layout fix."""

    def get_layout_transformer(self):
        return PerTensorLayoutTransform()

    def get_quantize_registry(self):
        return PerTensorPrunePreserveRegistry()


def per_tensor_scheme(*, preserve_sparsity: bool):
    """The QAT scheme for per-tensor weights (use on a `fold_batchnorm`ed model)."""
    return PerTensorPrunePreserveScheme() if preserve_sparsity else PerTensorScheme()
