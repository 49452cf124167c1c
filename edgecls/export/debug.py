"""Where int8 loses accuracy: per-layer quantization error of the TFLite and ONNX int8 files.

Both runtimes' own debuggers do the measuring; this module maps their names back
to Keras layers and ranks the layers on one scale:

- TFLite: `tf.lite.experimental.QuantizationDebugger` instruments the int8 model
  with `NumericVerify` ops, so every quantized op is compared with its float
  twin *on the same input*: the error is the layer's own, not the sum of the
  layers before it.
- ONNX: `onnxruntime.quantization.qdq_loss_debug` collects the float model's
  activations; each quantized layer of the QDQ model is cut out with
  `onnx.utils.extract_model` and run on the float model's input to that layer,
  which isolates its error the same way.

The ranking unit is the signal-to-quantization-noise ratio in dB (ONNX
Runtime's definition: 20 log10 of |float| / |float - int8|), lowest first. A
layer below `OUTLIER_SQNR_DB` (quantization noise above 10 % of the signal) is
an outlier; a healthy per-channel int8 model has none.
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.console import quiet_native
from edgecls.export.tflite import keras_converter

OUTLIER_SQNR_DB = 20.0
WEIGHTED_OPS_ONNX = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class LayerError:
    """The quantization error of one layer, measured on its own input.

    Attributes:
        layer: The Keras layer that holds the weights (as in `model.summary()`).
        op: The runtime's op type (`DEPTHWISE_CONV_2D`, `Conv`, ...).
        node: The runtime's name of it: the TFLite output tensor (a debugger
            `denylisted_nodes` entry) or the ONNX node (a `nodes_to_exclude` entry).
        sqnr_db: Signal-to-quantization-noise ratio of the layer's output; lower is worse.
        rmse_over_scale: Root-mean-square error in quantization steps of the output.
        scale: The output's quantization scale.
        low: Lowest value the int8 output can represent.
        high: Highest value the int8 output can represent.
        agreement: Cosine similarity of the float and int8 outputs (1 is identical).
    """

    layer: str
    op: str
    node: str
    sqnr_db: float
    rmse_over_scale: float
    scale: float
    low: float
    high: float
    agreement: float

    @property
    def outlier(self) -> bool:
        return self.sqnr_db < OUTLIER_SQNR_DB


def sqnr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    """20 log10(|reference| / |reference - approximation|), as ONNX Runtime's debugger defines it."""
    reference = np.asarray(reference, np.float64)
    eps = np.finfo(np.float32).eps
    signal = max(float(np.linalg.norm(reference)), eps)
    noise = max(float(np.linalg.norm(reference - approximation)), eps)
    return 20.0 * math.log10(signal / noise)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms > 0 else float(np.array_equal(a, b))


def keras_layer(runtime_name: str, weighted: Sequence[str], layers: Sequence[str]) -> str:
    """The Keras layer a runtime tensor/node name comes from: the weighted one if the name holds several.

    TFLite fuses conv, BatchNorm and ReLU into one op whose tensor name joins
    theirs with `;` (`model/conv_dw_3_relu/Relu6;model/conv_dw_3_bn/...;model/conv_dw_3/depthwise`);
    tf2onnx names nodes `model/conv_dw_3/depthwise`.
    """
    parts = [token for piece in runtime_name.split(";") for token in piece.split("/")]
    for candidates in (weighted, layers):
        found = next((token for token in parts if token in candidates), None)
        if found is not None:
            return found
    return runtime_name


def layer_names(model) -> tuple[list[str], list[str]]:
    """(layers with a kernel, all layers) of a Keras model."""
    weighted = [layer.name for layer in model.layers if getattr(layer, "kernel", None) is not None]
    weighted += [layer.name for layer in model.layers if getattr(layer, "depthwise_kernel", None) is not None]
    return weighted, [layer.name for layer in model.layers]


def rank(errors: list[LayerError]) -> list[LayerError]:
    """Worst first: lowest SQNR, then most quantization steps of error."""
    return sorted(errors, key=lambda e: (e.sqnr_db, -e.rmse_over_scale))


# --- TFLite -------------------------------------------------------------------------------------------


def _direct_metrics() -> dict[str, Callable[[np.ndarray, np.ndarray, float, int], float]]:
    def dequantize(quantized, scale, zero_point):
        return (quantized.astype(np.float32) - zero_point) * scale

    return {
        "sqnr_db": lambda f, q, s, z: sqnr_db(f, dequantize(q, s, z)),
        "agreement": lambda f, q, s, z: cosine(f, dequantize(q, s, z)),
    }


def tflite_debugger(model, representative: Callable[[], Iterator[list[np.ndarray]]], *, per_tensor: bool):
    """A `QuantizationDebugger` over `model` calibrated on `representative`, already run."""
    import tensorflow as tf

    converter = keras_converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter._experimental_disable_per_channel = per_tensor  # as `tflite.convert` does
    options = tf.lite.experimental.QuantizationDebugOptions(layer_direct_compare_metrics=_direct_metrics())
    with quiet_native():
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=representative, debug_options=options
        )
        debugger.run()
    return debugger


def tflite_layer_errors(debugger, model) -> list[LayerError]:
    """The debugger's per-layer statistics (its own CSV dump), named as in the Keras model, worst first."""
    buffer = io.StringIO()
    debugger.layer_statistics_dump(buffer)
    weighted, layers = layer_names(model)
    errors = []
    for row in csv.DictReader(io.StringIO(buffer.getvalue())):
        scale, zero_point = float(row["scale"]), int(float(row["zero_point"]))
        errors.append(
            LayerError(
                layer=keras_layer(row["tensor_name"], weighted, layers),
                op=row["op_name"],
                node=row["tensor_name"],
                sqnr_db=float(row["sqnr_db"]),
                rmse_over_scale=math.sqrt(float(row["mean_squared_error"])) / scale,
                scale=scale,
                low=(-128 - zero_point) * scale,
                high=(127 - zero_point) * scale,
                agreement=float(row["agreement"]),
            )
        )
    return rank(errors)


def tflite_with_float_layers(debugger, nodes: Sequence[str], io_type: str) -> bytes:
    """The int8 model with `nodes` (TFLite output tensor names) kept in float, from the debugger's calibration."""
    import tensorflow as tf
    from tensorflow.lite.python import convert

    dtype = {"int8": tf.int8, "uint8": tf.uint8, "float": tf.float32}[io_type]
    with quiet_native():
        return convert.mlir_quantize(
            debugger.calibrated_model,
            disable_per_channel=debugger.converter._experimental_disable_per_channel,
            fully_quantize=io_type != "float",
            input_data_type=dtype,
            output_data_type=dtype,
            denylisted_nodes=list(nodes),
        )


# --- ONNX ---------------------------------------------------------------------------------------------


def _producers(graph) -> dict[str, Any]:
    return {output: node for node in graph.node for output in node.output}


def _consumers(graph) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _quantized_span(node, producers, consumers, initializers) -> tuple[str, str, str, float, int] | None:
    """(float input, float output, dequantized output, output scale, zero point) of a QDQ layer, if it has them."""
    from onnx import numpy_helper

    source = producers.get(node.input[0])
    if source is None or source.op_type != "DequantizeLinear":
        return None
    quantize = producers.get(source.input[0])
    if quantize is None or quantize.op_type != "QuantizeLinear":
        return None
    tensor = node.output[0]
    for _ in range(4):  # through Relu/Clip to the output's QuantizeLinear
        following = consumers.get(tensor, [])
        quant = next((n for n in following if n.op_type == "QuantizeLinear"), None)
        if quant is not None:
            dequant = next((n for n in consumers.get(quant.output[0], []) if n.op_type == "DequantizeLinear"), None)
            if dequant is None:
                return None
            scale = float(numpy_helper.to_array(initializers[quant.input[1]]))
            zero_point = int(numpy_helper.to_array(initializers[quant.input[2]]))
            return quantize.input[0], tensor, dequant.output[0], scale, zero_point
        if len(following) != 1:
            return None
        tensor = following[0].output[0]
    return None


def onnx_layer_errors(fp32_path: Path, int8_path: Path, images: np.ndarray, model) -> list[LayerError]:
    """Per-layer error of a QDQ model, each layer run on the float model's input to it; worst first."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import qdq_loss_debug

    from edgecls.worker import onnx_session_options

    weighted, layers = layer_names(model)
    qdq = onnx.load(str(int8_path))
    initializers = {init.name: init for init in qdq.graph.initializer}
    producers, consumers = _producers(qdq.graph), _consumers(qdq.graph)
    with tempfile.TemporaryDirectory() as folder:
        augmented = Path(folder) / "float_augmented.onnx"
        qdq_loss_debug.modify_model_output_intermediate_tensors(str(fp32_path), str(augmented))
        inputs = [{"input": image[None].astype(np.float32)} for image in images]
        with quiet_native():
            floats = qdq_loss_debug.collect_activations(str(augmented), inputs)
        errors = []
        for node in qdq.graph.node:
            span = _quantized_span(node, producers, consumers, initializers) if node.op_type in WEIGHTED_OPS_ONNX else None
            if span is None or span[0] not in floats or span[1] not in floats:
                continue
            source, target, dequantized, scale, zero_point = span
            piece = Path(folder) / "layer.onnx"
            onnx.utils.extract_model(str(int8_path), str(piece), [source], [dequantized], check_model=False)
            session = ort.InferenceSession(str(piece), onnx_session_options(ort), providers=["CPUExecutionProvider"])
            shape = [1 if not isinstance(d, int) else d for d in session.get_inputs()[0].shape]
            outputs = [session.run(None, {source: a.reshape(shape)})[0].ravel() for a in floats[source]]
            reference = np.concatenate([a.ravel() for a in floats[target]])
            result = np.concatenate(outputs)
            errors.append(
                LayerError(
                    layer=keras_layer(node.name, weighted, layers),
                    op=node.op_type,
                    node=node.name,
                    sqnr_db=sqnr_db(reference, result),
                    rmse_over_scale=float(np.sqrt(np.mean((reference - result) ** 2))) / scale,
                    scale=scale,
                    low=(-128 - zero_point) * scale,
                    high=(127 - zero_point) * scale,
                    agreement=cosine(reference, result),
                )
            )
    return rank(errors)


def as_rows(errors: list[LayerError]) -> list[dict[str, Any]]:
    return [{**asdict(error), "outlier": error.outlier} for error in errors]
