"""One thin builder per backbone family, each wrapping `keras.applications`.

A builder returns the standalone no-top backbone at `input_size`; the registry
puts the head on its output so the classifier is one flat functional graph.
`weights` is what Keras understands: `"imagenet"` or None.
"""

from __future__ import annotations

from edgecls.models.registry import register_model


@register_model("mobilenet")
def mobilenet(input_size: int, alpha: float, weights: str | None):
    """MobileNet v1, `keras.applications.MobileNet`."""
    import tf_keras

    return tf_keras.applications.MobileNet(input_shape=(input_size, input_size, 3), alpha=alpha, include_top=False, weights=weights)


@register_model("mobilenet_v2")
def mobilenet_v2(input_size: int, alpha: float, weights: str | None):
    """MobileNetV2, `keras.applications.MobileNetV2`."""
    import tf_keras

    return tf_keras.applications.MobileNetV2(
        input_shape=(input_size, input_size, 3), alpha=alpha, include_top=False, weights=weights
    )


@register_model("mobilenet_v3_small")
def mobilenet_v3_small(input_size: int, alpha: float, weights: str | None):
    """MobileNetV3-Small without its built-in Rescaling (preprocessing is in the pipeline)."""
    import tf_keras

    return tf_keras.applications.MobileNetV3Small(
        input_shape=(input_size, input_size, 3),
        alpha=alpha,
        include_top=False,
        weights=weights,
        include_preprocessing=False,
    )


@register_model("mobilenet_v3_large")
def mobilenet_v3_large(input_size: int, alpha: float, weights: str | None):
    """MobileNetV3-Large without its built-in Rescaling (preprocessing is in the pipeline)."""
    import tf_keras

    return tf_keras.applications.MobileNetV3Large(
        input_shape=(input_size, input_size, 3),
        alpha=alpha,
        include_top=False,
        weights=weights,
        include_preprocessing=False,
    )


@register_model("resnet50")
def resnet50(input_size: int, alpha: float, weights: str | None):
    """ResNet50, `keras.applications.ResNet50` (fixed width: `alpha` must be 1.0)."""
    import tf_keras

    del alpha
    return tf_keras.applications.ResNet50(input_shape=(input_size, input_size, 3), include_top=False, weights=weights)
