"""`keras_converter` converts as `TFLiteConverter.from_keras_model` does, without the SavedModel detour."""

from __future__ import annotations

import numpy as np
import pytest


def _small_model():
    import tf_keras

    inputs = tf_keras.Input((16, 16, 3), name="image")
    x = tf_keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv")(inputs)
    x = tf_keras.layers.BatchNormalization(name="bn")(x)
    x = tf_keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return tf_keras.Model(inputs, tf_keras.layers.Dense(4, activation="softmax", name="probs")(x))


def _details(flatbuffer: bytes, image: np.ndarray):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    tensors = sorted((t["name"], tuple(t["shape"]), str(t["dtype"])) for t in interpreter.get_tensor_details())
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    return len(flatbuffer), interpreter.get_signature_list(), tensors, output


@pytest.mark.parametrize("int8", [False, True])
def test_the_flatbuffer_matches_from_keras_model(int8):
    import tensorflow as tf

    from edgecls.export.tflite import keras_converter

    model = _small_model()
    images = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)

    def converted(converter) -> bytes:
        if int8:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([image[None]] for image in images)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = converter.inference_output_type = tf.int8
        return converter.convert()

    image = (images[:1] * 100).astype(np.int8) if int8 else images[:1]
    reference = _details(converted(tf.lite.TFLiteConverter.from_keras_model(model)), image)
    ours = _details(converted(keras_converter(model)), image)
    assert ours[:3] == reference[:3]  # size, `serving_default` signature named after the Keras input and output, tensors
    assert reference[1] == {"serving_default": {"inputs": ["image"], "outputs": ["probs"]}}
    assert np.array_equal(ours[3], reference[3])


def test_a_model_with_two_outputs_is_a_conversion_error():
    import tf_keras

    from edgecls.errors import ConversionError
    from edgecls.export.tflite import keras_converter

    model = _small_model()
    two = tf_keras.Model(model.input, [model.output, model.get_layer("pool").output])
    with pytest.raises(ConversionError, match="one input and one output; this model has 1 and 2"):
        keras_converter(two)
