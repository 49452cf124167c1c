"""What each backbone family allows, as plain data (no TensorFlow import).

The config checks its values against these specs before TensorFlow is imported,
so a bad `--alpha` or `--input-size` fails in milliseconds with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneSpec:
    """Static facts about one backbone family.

    Attributes:
        name: Registry name, e.g. `"mobilenet_v2"`.
        description: One line for `edgecls models`.
        alpha_range: Inclusive (min, max) width multiplier; `(1.0, 1.0)` for fixed-width nets.
        default_alpha: Width multiplier used when the config leaves `alpha` unset.
        imagenet_alphas: Widths for which Keras publishes ImageNet weights.
        imagenet_sizes: Input sizes with a dedicated ImageNet training upstream;
            any other size is initialised from the 224 px file.
        preprocessing: How pixels in [0, 255] are mapped to the backbone's input
            (`"tf"`: to [-1, 1]; `"caffe"`: RGB to BGR minus the ImageNet mean).
        block_pattern: Regex whose first group names the block a layer belongs to;
            the unit that `partial --unfreeze N` counts.
        num_blocks: How many blocks `block_pattern` finds (the stem not counted).
        min_input_size: Smallest square input the backbone accepts, in pixels.
        max_input_size: Largest square input edgecls offers, in pixels.
    """

    name: str
    description: str
    alpha_range: tuple[float, float]
    default_alpha: float
    imagenet_alphas: tuple[float, ...]
    imagenet_sizes: tuple[int, ...]
    preprocessing: str
    block_pattern: str
    num_blocks: int
    min_input_size: int = 32
    max_input_size: int = 224


SPECS: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            name="mobilenet",
            description="MobileNet v1 (Howard et al. 2017): depthwise-separable convs",
            alpha_range=(0.25, 1.0),
            default_alpha=0.25,
            imagenet_alphas=(0.25, 0.5, 0.75, 1.0),
            imagenet_sizes=(128, 160, 192, 224),
            preprocessing="tf",
            block_pattern=r"^conv_(?:dw|pw|pad)_(\d+)",
            num_blocks=13,
        ),
        BackboneSpec(
            name="mobilenet_v2",
            description="MobileNetV2 (Sandler et al. 2018): inverted residuals",
            alpha_range=(0.35, 1.4),
            default_alpha=1.0,
            imagenet_alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
            imagenet_sizes=(96, 128, 160, 192, 224),
            preprocessing="tf",
            block_pattern=r"^(expanded_conv|block_\d+)_",
            num_blocks=17,
        ),
        BackboneSpec(
            name="mobilenet_v3_small",
            description="MobileNetV3-Small (Howard et al. 2019): SE + hard-swish",
            alpha_range=(0.5, 1.0),
            default_alpha=1.0,
            imagenet_alphas=(0.75, 1.0),
            imagenet_sizes=(224,),
            preprocessing="tf",
            block_pattern=r"^(expanded_conv(?:_\d+)?)/",
            num_blocks=11,
        ),
        BackboneSpec(
            name="mobilenet_v3_large",
            description="MobileNetV3-Large (Howard et al. 2019): SE + hard-swish",
            alpha_range=(0.5, 1.0),
            default_alpha=1.0,
            imagenet_alphas=(0.75, 1.0),
            imagenet_sizes=(224,),
            preprocessing="tf",
            block_pattern=r"^(expanded_conv(?:_\d+)?)/",
            num_blocks=15,
        ),
        BackboneSpec(
            name="resnet50",
            description="ResNet50 (He et al. 2015): the original article's model",
            alpha_range=(1.0, 1.0),
            default_alpha=1.0,
            imagenet_alphas=(1.0,),
            imagenet_sizes=(224,),
            preprocessing="caffe",
            block_pattern=r"^(conv\d_block\d+)_",
            num_blocks=16,
        ),
    )
}


def get_spec(name: str) -> BackboneSpec:
    """Return the spec of backbone `name`.

    Raises:
        ConfigError: `name` is not registered; the message lists valid names.
    """
    from edgecls.errors import ConfigError

    if name not in SPECS:
        raise ConfigError(f"`model.name` must be one of {', '.join(sorted(SPECS))}; got {name!r}.")
    return SPECS[name]


def check_model_arguments(name: str, alpha: float | None, input_size: int, weights: str) -> float:
    """Check a backbone's arguments against its spec, before anything is built; returns the resolved alpha.

    Raises:
        ConfigError: naming the `model.*` key, what is allowed, and what was given.
    """
    from pathlib import Path

    from edgecls.errors import ConfigError

    spec = get_spec(name)
    alpha = spec.default_alpha if alpha is None else alpha
    low, high = spec.alpha_range
    if not low <= alpha <= high:
        allowed = f"{low}" if low == high else f"in [{low}, {high}]"
        raise ConfigError(f"`model.alpha` must be {allowed} for {name}; got {alpha!r}.")
    if weights == "imagenet" and alpha not in spec.imagenet_alphas:
        raise ConfigError(
            f"`model.alpha` must be one of {list(spec.imagenet_alphas)} with ImageNet weights for {name}; got {alpha!r}."
            " Use `--weights none` to train another width from scratch."
        )
    if not spec.min_input_size <= input_size <= spec.max_input_size:
        raise ConfigError(
            f"`model.input_size` must be in [{spec.min_input_size}, {spec.max_input_size}] for {name}; got {input_size!r}."
        )
    if weights not in {"imagenet", "none"} and not Path(weights).is_file():
        raise ConfigError(f"`model.weights` must be `imagenet`, `none` or an existing .h5 file; got {weights!r}.")
    return alpha
