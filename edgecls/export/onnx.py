"""ONNX export through tf2onnx, and int8 QDQ through `onnxruntime.quantization`.

fp32: `tf2onnx.convert.from_function` (opset >= 13), checked with `onnx.checker`.
int8 of a float model: `quant_pre_process`, then `quantize_static` (QDQ,
per-channel int8 weights, int8 activations) calibrated on the same images as
TFLite. int8 of a QAT model: its int8 TFLite conversion (learned ranges, float
I/O) through tf2onnx's TFLite front end, so ONNX and TFLite hold the same
quantized model. Metadata goes into `metadata_props`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.console import quiet_native
from edgecls.errors import ConversionError

OPSET = 13
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def convert(model, input_size: int, opset: int = OPSET):
    """A tf-keras model as an `onnx.ModelProto` (NHWC float input named `input`)."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    signature = (tf.TensorSpec((None, input_size, input_size, 3), tf.float32, name="input"),)
    function = tf.function(lambda images: model(images, training=False))
    try:
        proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=opset)
    except Exception as exc:  # tf2onnx raises plain exceptions naming the op
        raise ConversionError(f"tf2onnx failed: {str(exc).strip().splitlines()[-1][:200]}.") from None
    onnx.checker.check_model(proto)
    return proto


def from_tflite(flatbuffer: bytes, opset: int = OPSET):
    """An int8 TFLite model (float I/O) as an ONNX QDQ model with the same scales and zero points.

    This is how a QAT model reaches ONNX: tf2onnx's TFLite front end keeps the
    ranges TFMOT learned (its Keras front end turns TFMOT's fake-quant graph
    into a model that scores 10 % here).
    """
    import onnx
    import tf2onnx

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.tflite"
        path.write_bytes(flatbuffer)
        try:
            with quiet_native():  # tf2onnx's TFLite reader starts an interpreter, which announces its delegate
                proto, _ = tf2onnx.convert.from_tflite(str(path), opset=opset)
        except Exception as exc:
            raise ConversionError(f"tf2onnx failed on the int8 TFLite model: {str(exc).strip().splitlines()[-1][:200]}.") from None
    unshare_weight_initializers(proto)
    onnx.checker.check_model(proto)
    return proto


def unshare_weight_initializers(proto):
    """Give every int8 weight's DequantizeLinear its own weight and zero-point initializers; return `proto`.

    tf2onnx merges equal constants, so all per-channel weight zero points of one width
    become one shared tensor. ONNX Runtime's exact int8 mode for x86 CPUs without VNNI
    (`session.x64quantprecision`, which edgecls' sessions set) rewrites each weight and
    its zero point to uint8 under names derived from theirs, and fails to load the model
    at the second node that shares one ("Attempt to replace the existing tensor").
    """
    import onnx
    from onnx import numpy_helper

    initializers = {t.name: t for t in proto.graph.initializer}
    int8 = {name for name, t in initializers.items() if t.data_type == onnx.TensorProto.INT8}
    seen: set[str] = set()
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in int8:
            continue
        for index, role in ((0, "weight"), (2, "zero_point")):
            name = node.input[index] if index < len(node.input) else ""
            if name in seen:
                copy = numpy_helper.from_array(numpy_helper.to_array(initializers[name]), f"{node.output[0]}_{role}")
                proto.graph.initializer.append(copy)
                node.input[index] = copy.name
            elif name in int8:
                seen.add(name)
    return proto


class _Reader:
    """`onnxruntime.quantization.CalibrationDataReader` over preprocessed images, one at a time."""

    def __init__(self, input_name: str, images: np.ndarray):
        self._items = iter([{input_name: image[None].astype(np.float32)} for image in images])

    def get_next(self):
        return next(self._items, None)

    def rewind(self):  # pragma: no cover - not used by quantize_static
        raise NotImplementedError


def quantize(
    fp32_path: Path,
    out_path: Path,
    images: np.ndarray,
    method: str = "minmax",
    *,
    per_tensor: bool = False,
    nodes_to_exclude: list[str] | None = None,
) -> None:
    """Static int8 QDQ quantization of an fp32 ONNX file, calibrated on `images` (per-channel weights by default).

    `nodes_to_exclude` (node names) stay in float: the accuracy-aware fallback.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        try:
            quantize_static(
                str(prepared),
                str(out_path),
                _Reader("input", images),
                quant_format=QuantFormat.QDQ,
                per_channel=not per_tensor,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=calibrate,
                nodes_to_exclude=nodes_to_exclude or [],
            )
        except Exception as exc:
            raise ConversionError(f"onnxruntime quantize_static failed: {str(exc).splitlines()[0][:200]}.") from None


def add_metadata(proto, metadata: dict[str, Any]):
    """Set `metadata_props` (string values; lists and dicts as JSON) and return `proto`."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    return proto


def read_metadata(path: str | Path) -> dict[str, str]:
    """`metadata_props` of an ONNX file as a dict of strings."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def describe(path: str | Path) -> dict[str, Any]:
    """Opset, op types, the number of int8 weights, and their granularity (QDQ scales per weight)."""
    import onnx

    proto = onnx.load(str(path))
    ops = sorted({node.op_type for node in proto.graph.node})
    initializers = {t.name: t for t in proto.graph.initializer}
    int8_weights = {name for name, t in initializers.items() if t.data_type == onnx.TensorProto.INT8}
    granularity = {
        "per-channel" if sum(initializers[node.input[1]].dims) > 1 else "per-tensor"
        for node in proto.graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] in int8_weights and node.input[1] in initializers
    }
    return {
        "opset": max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "ops": ops,
        "int8_initializers": len(int8_weights),
        "weight_granularity": "+".join(sorted(granularity)) or None,
    }
