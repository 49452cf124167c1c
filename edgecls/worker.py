"""Self-contained model runner: scores and latency of one .tflite or .onnx file, as JSON.

Runs in a child process (so a runtime that crashes on a corrupt file cannot take
edgecls down) and, copied with `preprocessing.py` beside it, on a remote device over
SSH. It needs only the standard library, NumPy, and whichever runtime the device
has: ai-edge-litert (or tflite-runtime) for .tflite, onnxruntime for .onnx.

    python worker.py scores MODEL IMAGES.npy OUT.npy [--mode tf|caffe] [--threads N]
    python worker.py bench MODEL [--runs N] [--warmup N] [--threads N] [--images IMAGES.npy]

`scores` writes float scores for uint8 images (preprocessed here); `bench` prints
one JSON object: load time, per-run latencies (p50/p90/p99, mean), images/s,
peak resident memory, and the runtime used. Errors print `{"error": ...}` and exit 3.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

import numpy as np

try:  # on the host, the package's one definition; on a device, the copy `bench` puts beside this file
    from edgecls.preprocessing import normalize_numpy
except ImportError:
    from preprocessing import normalize_numpy


try:  # on the host: edgecls' own error type; on a device this file stands alone
    from edgecls.errors import WorkerError
except ImportError:

    class WorkerError(Exception):
        """A clear, expected failure (missing runtime, unreadable model)."""


def quantize(values: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    """Float values to an integer tensor: round(v / scale) + zero_point, clipped to the dtype."""
    info = np.iinfo(dtype)
    return np.clip(np.round(values / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer tensor back to float32: (q - zero_point) * scale."""
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def preprocess(images: np.ndarray, mode: str) -> np.ndarray:
    """uint8 pixels to the backbone's input (`edgecls.preprocessing`, the one definition)."""
    return normalize_numpy(images, mode)


def _litert(path: str, threads: int | None):
    try:
        from ai_edge_litert.interpreter import Interpreter

        name = "ai-edge-litert"
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter

            name = "tflite-runtime"
        except ImportError:
            try:
                from tensorflow.lite import Interpreter

                name = "tensorflow.lite"
            except ImportError:
                raise WorkerError("no TFLite runtime on this device: pip install ai-edge-litert (or tflite-runtime)") from None
    try:
        return Interpreter(model_path=path, num_threads=threads), name
    except (ValueError, RuntimeError) as exc:
        raise WorkerError(f"LiteRT cannot load {os.path.basename(path)}: {str(exc).splitlines()[0]}") from None


class TFLiteModel:
    def __init__(self, path: str, threads: int | None):
        self.interpreter, self.runtime = _litert(path, threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch = None

    def run(self, images: np.ndarray) -> np.ndarray:
        if len(images) != self.batch:
            self.interpreter.resize_tensor_input(self.input["index"], [len(images), *self.input["shape"][1:]])
            self.interpreter.allocate_tensors()
            self.batch = len(images)
        data = images.astype(np.float32)
        if self.input["dtype"] != np.float32:
            data = quantize(images, *self.input["quantization"], self.input["dtype"])
        self.interpreter.set_tensor(self.input["index"], data)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])
        if self.output["dtype"] != np.float32:
            return dequantize(out, *self.output["quantization"])
        return out.astype(np.float32)


class OnnxModel:
    def __init__(self, path: str, threads: int | None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise WorkerError("no ONNX runtime on this device: pip install onnxruntime") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/...
            raise WorkerError(f"ONNX Runtime cannot load {os.path.basename(path)}: {str(exc).splitlines()[0]}") from None
        self.name = self.session.get_inputs()[0].name
        self.runtime = f"onnxruntime {ort.__version__}"
        self.input = {"shape": [1, *self.session.get_inputs()[0].shape[1:]]}

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.name: images.astype(np.float32)})[0]


def open_model(path: str, threads: int | None):
    if path.endswith(".tflite"):
        return TFLiteModel(path, threads)
    if path.endswith(".onnx"):
        return OnnxModel(path, threads)
    raise WorkerError(f"unknown model type: {path}")


def scores(args) -> dict:
    model = open_model(args.model, args.threads)
    images = np.load(args.images)
    out = [model.run(preprocess(images[i : i + 50], args.mode)) for i in range(0, len(images), 50)]
    np.save(args.out, np.concatenate(out))
    return {"runtime": model.runtime, "images": int(len(images))}


def peak_rss_kib() -> float:
    """Peak resident memory of this process, KiB.

    Linux keeps `ru_maxrss` across exec (it would report the parent's peak), so
    the per-image high-water mark VmHWM is read instead where it exists.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if platform.system() == "Darwin" else float(peak)


def bench(args) -> dict:
    start = time.perf_counter()
    model = open_model(args.model, args.threads)
    if args.images:
        sample = preprocess(np.load(args.images)[:1], args.mode)
    else:
        shape = [1, *[int(d) for d in model.input["shape"][1:]]]
        sample = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    model.run(sample)
    load = time.perf_counter() - start
    for _ in range(args.warmup):
        model.run(sample)
    times = []
    for _ in range(args.runs):
        begin = time.perf_counter()
        model.run(sample)
        times.append((time.perf_counter() - begin) * 1000)
    times = np.array(times)
    peak_kib = peak_rss_kib()
    return {
        "runtime": model.runtime,
        "threads": args.threads,
        "load_seconds": load,
        "runs": args.runs,
        "p50_ms": float(np.percentile(times, 50)),
        "p90_ms": float(np.percentile(times, 90)),
        "p99_ms": float(np.percentile(times, 99)),
        "mean_ms": float(times.mean()),
        "images_per_second": float(1000 / np.median(times)),
        "peak_rss_mib": peak_kib / 1024,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("scores", "bench"):
        command = sub.add_parser(name)
        command.add_argument("model")
        command.add_argument("--mode", default="tf", choices=["tf", "caffe"])
        command.add_argument("--threads", type=int, default=None)
        if name == "scores":
            command.add_argument("images")
            command.add_argument("out")
        else:
            command.add_argument("--runs", type=int, default=100)
            command.add_argument("--warmup", type=int, default=10)
            command.add_argument("--images", default=None)
    args = parser.parse_args(argv)
    try:
        result = scores(args) if args.command == "scores" else bench(args)
    except WorkerError as exc:
        print(json.dumps({"error": str(exc)}))
        return 3
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
