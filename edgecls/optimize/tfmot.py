"""TFMOT's pruning and quantization-aware training, as small functions over a Keras model.

Built from TFMOT's own pieces, the way its guides use them: `prune_low_magnitude` on
the prunable layers (a clone function), a `PolynomialDecay` from 0 to the target
sparsity, then `strip_pruning`; `quantize_annotate_model` + `quantize_apply` for QAT;
and `Default8BitPrunePreserveQuantizeScheme` for pruning-preserving QAT so the zeros
survive int8. Every function here returns a clone and leaves its input as is, but
`train_batchnorm` and `freeze_batchnorm`, which set flags in place before any wrapping.
"""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tf_keras

from edgecls.errors import ConfigError


def load_tfmot():
    """`tensorflow_model_optimization`, imported on first use: it is slow to import."""
    import tensorflow_model_optimization as tfmot

    return tfmot


def prunable(layer, kinds: tuple[str, ...]) -> bool:
    """True for the layers `kinds` names that TFMOT can prune.

    `conv` is every Conv2D with a kernel (standard and pointwise; TFMOT does not
    prune depthwise kernels), `dense` the classifier head.
    """
    if isinstance(layer, tf_keras.layers.DepthwiseConv2D):
        return False
    if isinstance(layer, tf_keras.layers.Conv2D):
        return "conv" in kinds
    if isinstance(layer, tf_keras.layers.Dense):
        return "dense" in kinds
    return False


def pruning_schedule(sparsity: float, total_steps: int):
    """Polynomial decay from 0 to `sparsity`, reached at 70 % of the steps.

    The pruning frequency scales with the run (about 20 pruning updates), so a
    short run still reaches its target; the last 30 % recover at full sparsity.
    """
    end = max(1, int(total_steps * 0.7))
    frequency = max(1, end // 20)
    return load_tfmot().sparsity.keras.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=end, frequency=frequency)


def apply_pruning(model, sparsity: float, total_steps: int, *, kinds=("conv", "dense"), structured: bool = False):
    """A clone of `model` with the prunable layers wrapped for magnitude pruning.

    Args:
        model: A flat functional classifier (not modified).
        sparsity: Target fraction of zeros in each pruned kernel, in (0, 1).
        total_steps: Training steps the pruning will run for.
        kinds: Which layers to prune (see `prunable`).
        structured: 2:4 sparsity (two zeros in every four input weights); layers
            whose input width is not a multiple of 4 stay dense.
    """
    tfmot = load_tfmot()
    schedule = pruning_schedule(sparsity, total_steps)

    def clone(layer):
        fresh = layer.__class__.from_config(layer.get_config())
        if not prunable(layer, kinds) or (structured and layer.kernel.shape[-2] % 4):
            return fresh
        if structured:
            return tfmot.sparsity.keras.prune_low_magnitude(fresh, schedule, sparsity_m_by_n=(2, 4))
        return tfmot.sparsity.keras.prune_low_magnitude(fresh, schedule)

    pruned = tf_keras.models.clone_model(model, clone_function=clone)
    _copy_weights(model, pruned)
    return pruned


def _copy_weights(source, target) -> None:
    """Copy weights layer by layer by name (wrappers hold the same kernels)."""
    for layer in target.layers:
        original = source.get_layer(layer.name.removeprefix("prune_low_magnitude_"))
        inner = getattr(layer, "layer", layer)
        inner.set_weights(original.get_weights())


def strip(model):
    """`strip_pruning`: the plain model with the pruned (zeroed) kernels."""
    return load_tfmot().sparsity.keras.strip_pruning(model)


def kernel_sparsity(model, kinds=("conv", "dense")) -> dict[str, Any]:
    """Fraction of exact zeros per prunable kernel, and over all of them (weighted by size)."""
    per_layer, zeros, total = {}, 0, 0
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if not prunable(inner, kinds):
            continue
        kernel = next(w for w in layer.weights if w.name.split("/")[-1] == "kernel:0").numpy()
        per_layer[inner.name] = float(np.mean(kernel == 0))
        zeros += int(np.sum(kernel == 0))
        total += kernel.size
    return {"overall": zeros / total if total else 0.0, "per_layer": per_layer}


def gzip_bytes(model) -> int:
    """Bytes of the model's HDF5 file after gzip: what pruning saves on disk and over the air."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.h5"
        model.save(str(path), include_optimizer=False)
        return len(gzip.compress(path.read_bytes(), compresslevel=9))


def unsupported_for_qat(model) -> list[tuple[str, str]]:
    """(name, class) of layers the default 8-bit QAT scheme cannot quantize.

    BatchNormalization is not in TFMOT's registry because its layout transforms
    fold it into the convolution before it; it is not reported.
    """
    supported = load_tfmot().quantization.keras.default_8bit.Default8BitQuantizeRegistry()
    skip = (tf_keras.layers.InputLayer, tf_keras.layers.BatchNormalization)
    return [
        (layer.name, type(layer).__name__)
        for layer in model.layers
        if not isinstance(layer, skip) and not supported.supports(layer)
    ]


def apply_qat(model, *, preserve_sparsity: bool = False, per_tensor: bool = False, skip_unsupported: bool = False):
    """A quantization-aware clone of `model` (default 8-bit scheme).

    Args:
        model: A flat functional float model (not modified).
        preserve_sparsity: Use the prune-preserving scheme so zero weights stay zero.
        per_tensor: One weight scale per tensor instead of per output channel;
            BatchNorm is folded into the convolutions first (`fold_batchnorm`).
        skip_unsupported: Leave layers TFMOT cannot quantize in float instead of failing.

    Raises:
        ConfigError: a layer cannot be quantized and `skip_unsupported` is off;
            the message names the layer and its class.
    """
    tfmot = load_tfmot()
    quant = tfmot.quantization.keras
    if per_tensor:
        from edgecls.optimize import per_tensor as per_tensor_qat

        model = per_tensor_qat.fold_batchnorm(model)
    unsupported = unsupported_for_qat(model)
    if unsupported and not skip_unsupported:
        name, kind = unsupported[0]
        raise ConfigError(
            f"layer `{name}` ({kind}) cannot be quantization-aware trained by TFMOT "
            f"({len(unsupported)} such layer(s)); pass `--skip-unsupported` to keep them in float."
        )
    if unsupported:
        skipped = {name for name, _ in unsupported}

        def annotate(layer):
            clone = layer.__class__.from_config(layer.get_config())
            return clone if layer.name in skipped else quant.quantize_annotate_layer(clone)

        annotated = tf_keras.models.clone_model(model, clone_function=annotate)
        annotated.set_weights(model.get_weights())
    else:
        annotated = quant.quantize_annotate_model(model)
    if per_tensor:
        scheme = per_tensor_qat.per_tensor_scheme(preserve_sparsity=preserve_sparsity)
    elif preserve_sparsity:
        scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
    else:
        scheme = quant.default_8bit.Default8BitQuantizeScheme()
    try:
        with quant.quantize_scope():
            return quant.quantize_apply(annotated, scheme)
    except RuntimeError as exc:  # TFMOT: "Layer <name>:<class> is not supported. ..."
        reason = str(exc).split(". ")[0]
        raise ConfigError(f"TFMOT cannot quantize this model: {reason}; pass `--skip-unsupported`.") from None


def train_batchnorm(model) -> None:
    """Let every BatchNormalization layer re-estimate its statistics (a channel-pruned model's inputs changed)."""
    for layer in model.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.trainable = True


def freeze_batchnorm(model) -> None:
    """Keep every BatchNormalization layer in inference mode (in place, before any TFMOT wrapping).

    Whether or not fine-tuning trained them, pruning and QAT must not re-estimate
    their statistics from small batches: with trainable BatchNorm, QAT of the default
    model lost 8.8 pp (docs/benchmarks.md); with it frozen, 0.17 pp. The clones
    TFMOT makes keep the flag. (Freezing inside a QuantizeWrapper afterwards
    would list the BatchNorm weights twice and break saving.)
    """
    for layer in model.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.trainable = False
