"""The same classifier at another input size: every weight of a convolutional network with global pooling
is independent of the image size, so the rebuilt graph takes the weights as they are."""

from __future__ import annotations


def input_size_of(model) -> int:
    """The square input side a Keras classifier takes."""
    return int(model.input_shape[1])


def with_input_size(model, size: int):
    """A copy of a flat functional classifier whose input is `size` x `size`, with the weights copied.

    Raises:
        ValueError: a layer's weights depend on the input size (a Flatten before a Dense,
            for instance): the copy cannot take them.
    """
    import tf_keras

    if size == input_size_of(model):
        return model
    config = model.get_config()
    for layer in config["layers"]:
        layer.pop("build_config", None)  # shapes of the old size; from_config infers the new ones
        if layer["class_name"] == "InputLayer":
            shape = list(layer["config"]["batch_input_shape"])
            layer["config"]["batch_input_shape"] = [shape[0], size, size, *shape[3:]]
    resized = tf_keras.Model.from_config(config)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            resized.get_layer(layer.name).set_weights(weights)
    return resized
