"""The model registry: `@register_model`, `list_models` and `create_model`.

`create_model` builds ONE flat functional graph, backbone layers followed by
GlobalAveragePooling, Dropout and Dense, never a Model nested in a Model:
pruning and quantization-aware training need every layer at the top level.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from edgecls.errors import ConfigError
from edgecls.models.specs import SPECS, get_spec

_BUILDERS: dict[str, Callable] = {}
HEAD_LAYERS = ("global_pool", "head_dropout", "predictions")


def register_model(name: str) -> Callable[[Callable], Callable]:
    """Register a backbone builder `fn(input_size, alpha, weights) -> keras.Model` under `name`.

    The name must have a `BackboneSpec` in `edgecls.models.specs.SPECS`.
    """

    def decorator(fn: Callable) -> Callable:
        if name not in SPECS:
            raise ValueError(f"register_model({name!r}): add its BackboneSpec to SPECS first.")
        _BUILDERS[name] = fn
        return fn

    return decorator


def _builders() -> dict[str, Callable]:
    import edgecls.models.families  # noqa: F401  (fills the registry)

    return _BUILDERS


def list_models() -> list[str]:
    """Names of every registered backbone, sorted."""
    return sorted(_builders())


def create_model(
    name: str,
    *,
    num_classes: int = 10,
    input_size: int = 128,
    alpha: float | None = None,
    weights: str = "none",
    dropout: float = 0.2,
) -> tuple[Any, dict[str, Any]]:
    """Build a fresh classifier: backbone `name` plus a new head.

    Args:
        name: A registered backbone (`list_models()`).
        num_classes: Outputs of the softmax head. Defaults to 10.
        input_size: Square input side in pixels. Defaults to 128.
        alpha: Width multiplier; None for the family's default.
        weights: `imagenet` (Keras' own download and cache), `none`, or a path to
            a Keras .h5 no-top weights file. Defaults to `none`.
        dropout: Dropout rate before the Dense layer. Defaults to 0.2.

    Returns:
        (model, weights_info): a compiled-free tf-keras Model taking preprocessed
        float32 [N, input_size, input_size, 3], and a dict recording how the
        backbone weights were resolved (for the manifest).

    Raises:
        ConfigError: unknown name, or an alpha/input size the family does not allow.
        WeightsError: ImageNet weights unavailable offline, or a file that does not fit.
    """
    import tf_keras

    from edgecls.models.specs import check_model_arguments
    from edgecls.models.weights import build_backbone

    if name not in _builders():
        raise ConfigError(f"`model.name` must be one of {', '.join(list_models())}; got {name!r}.")
    alpha = check_model_arguments(name, alpha, input_size, weights)
    backbone, info = build_backbone(_builders()[name], name, alpha=alpha, input_size=input_size, weights=weights)
    x = tf_keras.layers.GlobalAveragePooling2D(name="global_pool")(backbone.output)
    x = tf_keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = tf_keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    model = tf_keras.Model(backbone.input, outputs, name=f"{name}_classifier")
    return model, info


def backbone_blocks(model, name: str) -> list[list[Any]]:
    """Group the backbone layers of a classifier into blocks, bottom to top.

    A layer whose name matches the family's `block_pattern` starts or continues
    that block; any other layer joins the block before it (the stem, before the
    first block, is block 0 and is not counted). Head layers are excluded.

    Returns:
        One list of layers per block, the stem excluded.
    """
    pattern = re.compile(get_spec(name).block_pattern)
    blocks: list[list[Any]] = [[]]
    current = None
    for layer in model.layers:
        if layer.name in HEAD_LAYERS or type(layer).__name__ == "InputLayer":
            continue
        match = pattern.match(layer.name)
        if match and match.group(1) != current:
            current = match.group(1)
            blocks.append([])
        blocks[-1].append(layer)
    return blocks[1:]


def stem_layers(model, name: str) -> list[Any]:
    """Backbone layers before the first block."""
    in_blocks = {id(layer) for block in backbone_blocks(model, name) for layer in block}
    return [
        layer
        for layer in model.layers
        if id(layer) not in in_blocks and layer.name not in HEAD_LAYERS and type(layer).__name__ != "InputLayer"
    ]
