"""Runners for exported models: load, describe the input, run a batch of float images.

Each runner quantizes float inputs and dequantizes outputs itself (scale and
zero point), so callers always pass preprocessed float32 images and get float
scores back, whatever the model's I/O types.

LiteRT is imported as `ai_edge_litert`, falling back to `tflite_runtime` (old
devices), then to `tensorflow.lite`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def litert_interpreter_class():
    """The TFLite `Interpreter` class of the first runtime installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            from tensorflow.lite import Interpreter
    return Interpreter


def _quantize(values: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype == np.float32:
        return values.astype(np.float32)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(values / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return values.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return (values.astype(np.float32) - zero_point) * scale


class TFLiteRunner:
    """A .tflite file on LiteRT (XNNPACK delegate as the runtime applies it by default).

    Args:
        path: The model file.
        threads: Interpreter threads; None for the runtime's default.
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        interpreter_class = litert_interpreter_class()
        self.interpreter = interpreter_class(model_path=str(path), num_threads=threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self._batch = None

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            shape = [batch, *self.input["shape"][1:]]
            self.interpreter.resize_tensor_input(self.input["index"], shape)
            self.interpreter.allocate_tensors()
            self._batch = batch

    def run(self, images: np.ndarray) -> np.ndarray:
        """Float scores [N, classes] for preprocessed float images [N, H, W, 3]."""
        self._resize(len(images))
        self.interpreter.set_tensor(self.input["index"], _quantize(images, self.input))
        self.interpreter.invoke()
        return _dequantize(self.interpreter.get_tensor(self.output["index"]), self.output)


class OnnxRunner:
    """An .onnx file on ONNX Runtime (CPU).

    Args:
        path: The model file.
        threads: Intra-op threads; None for the runtime's default.
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, images: np.ndarray) -> np.ndarray:
        """Float scores [N, classes] for preprocessed float images [N, H, W, 3]."""
        return self.session.run(None, {self.input_name: images.astype(np.float32)})[0]


def open_runner(path: str | Path, threads: int | None = None):
    """A runner for `path`, chosen by its suffix (.tflite or .onnx)."""
    suffix = Path(path).suffix
    if suffix == ".tflite":
        return TFLiteRunner(path, threads)
    if suffix == ".onnx":
        return OnnxRunner(path, threads)
    raise ValueError(f"no runner for {path}: expected .tflite or .onnx")


def predict(runner, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Scores of `runner` over preprocessed float images, in batches."""
    return np.concatenate([runner.run(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
