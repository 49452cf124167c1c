"""TFLite export through `TFLiteConverter`: fp32, fp16, dynamic-range and full int8.

Metadata (labels, input size, normalization) is embedded in the flatbuffer's
`metadata` table under the name `edgecls`, as JSON, so a device-side runner
needs nothing else; `read_metadata` reads it back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from edgecls.console import quiet_native
from edgecls.errors import ConversionError

METADATA_NAME = "edgecls"
IO_TYPES = ("int8", "uint8", "float")


def _converter_error(exc: Exception) -> ConversionError:
    text = str(exc)
    ops = sorted(set(re.findall(r"'(tf\.\w+|tfl\.\w+)'", text))) or sorted(set(re.findall(r"\b(tf\.[A-Z]\w+)", text)))
    what = f"op {', '.join(ops)}" if ops else text.strip().splitlines()[-1][:200]
    return ConversionError(f"TFLite converter failed on {what}.")


def keras_converter(model):
    """A `TFLiteConverter` for tf-keras `model` that traces the model's call once.

    `TFLiteConverter.from_keras_model` first saves the whole model as a SavedModel, which traces
    every layer's call again (most of the 12 s for MobileNet v1 0.25 @128, bench/convert_speed.py). Saving one
    serving function over the model's variables instead gives the same flatbuffer — the same ops,
    tensor names, quantization, file size and `serving_default` signature (input named after the
    Keras input, output after the Keras output layer) — three to five times faster.

    Raises:
        ConversionError: the model has more than one input or output.
    """
    import tensorflow as tf

    if len(model.inputs) != 1 or len(model.output_names) != 1:
        raise ConversionError(f"a classifier has one input and one output; this model has {len(model.inputs)} and"
                              f" {len(model.output_names)}.")  # fmt: skip
    (keras_input,), (output_name,) = model.inputs, model.output_names
    spec = tf.TensorSpec(model.input_shape, keras_input.dtype, name=keras_input.name.split(":")[0])
    serve = tf.function(lambda images: {output_name: model(images, training=False)}, input_signature=[spec])
    holder = tf.Module()
    holder.model_variables, holder.serve = list(model.variables), serve  # saved with the signature, as the model's would be
    return tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], holder)


def convert(
    model,
    precision: str,
    *,
    io: str = "int8",
    representative: Callable[[], Iterator[list[np.ndarray]]] | None = None,
    quantization_aware: bool = False,
    per_tensor: bool = False,
) -> bytes:
    """Convert a tf-keras model to a TFLite flatbuffer.

    Args:
        model: The Keras model (float, or QAT with learned ranges).
        precision: `fp32`, `fp16`, `dynamic` or `int8`.
        io: For int8: input/output type, `int8`, `uint8` or `float`. Defaults to `int8`.
        representative: For int8 of a float model: yields `[float32 batch of 1]`.
        quantization_aware: The model carries fake-quant ranges (no representative set needed).
        per_tensor: For dynamic and int8 of a float model: one scale per weight tensor
            instead of per output channel. (A QAT model's granularity is its training's.)

    Raises:
        ConversionError: the converter failed; the message names the op when it can.
    """
    import tensorflow as tf

    converter = keras_converter(model)
    if precision != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if per_tensor and not quantization_aware:
        converter._experimental_disable_per_channel = True  # the converter's only switch for it (TF 2.21)
    if precision == "int8":
        if not quantization_aware:
            converter.representative_dataset = representative
            # QAT graphs must not set this: TF 2.21's metric hook then demands a representative set.
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = {"int8": tf.int8, "uint8": tf.uint8, "float": tf.float32}[io]
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    try:
        with quiet_native():  # the converter prints its quantization settings on stderr
            return converter.convert()
    except Exception as exc:  # ConverterError, ValueError, RuntimeError from MLIR
        raise _converter_error(exc) from None


def add_metadata(flatbuffer: bytes, metadata: dict[str, Any]) -> bytes:
    """Return `flatbuffer` with `metadata` (JSON) in its metadata table under `edgecls`."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata, sort_keys=True).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def strip_strings(flatbuffer: bytes) -> bytes:
    """`flatbuffer` without tensor names, subgraph names and signatures (TFLite's `strip_strings`).

    Metadata entries, and so the `edgecls` table, are kept; runners that look up
    tensors by signature (`get_signature_runner`) cannot open the result.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    flatbuffer_utils.strip_strings(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_metadata(flatbuffer: bytes) -> dict[str, Any] | None:
    """The `edgecls` metadata of a TFLite flatbuffer, or None."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    for entry in model.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name == METADATA_NAME:
            return json.loads(bytes(model.buffers[entry.buffer].data).decode())
    return None


def input_shape(flatbuffer: bytes) -> list[int]:
    """The shape of a TFLite model's first input, read from the flatbuffer (pure Python: no kernel runs)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    graph = model.subgraphs[0]
    return [int(d) for d in graph.tensors[graph.inputs[0]].shape]


def describe(flatbuffer: bytes) -> dict[str, Any]:
    """I/O dtypes, op names, int8 weight granularity, and the zero fraction of the int8 weights."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=flatbuffer, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interpreter.allocate_tensors()
    zeros = total = 0
    weight_dtypes, scales_per_weight = set(), set()
    ops = interpreter._get_ops_details()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    for op in ops:
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            weights = interpreter.get_tensor(op["inputs"][1])
            weight_dtypes.add(weights.dtype.name)
            scales = tensors[op["inputs"][1]]["quantization_parameters"]["scales"]
            if weights.dtype == np.int8:
                scales_per_weight.add("per-channel" if len(scales) > 1 else "per-tensor")
            if op["op_name"] != "DEPTHWISE_CONV_2D" and weights.dtype == np.int8:
                zeros += int(np.sum(weights == 0))
                total += weights.size
    return {
        "input_dtype": np.dtype(interpreter.get_input_details()[0]["dtype"]).name,
        "output_dtype": np.dtype(interpreter.get_output_details()[0]["dtype"]).name,
        "weight_dtypes": sorted(weight_dtypes),
        "weight_granularity": "+".join(sorted(scales_per_weight)) or None,
        "ops": sorted({op["op_name"] for op in ops}),
        "int8_weight_sparsity": zeros / total if total else None,
    }
