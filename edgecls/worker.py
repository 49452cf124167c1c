"""Self-contained model runner: scores and latency of one .tflite or .onnx file, as JSON.

Runs in a child process (so a runtime that crashes on a corrupt file cannot take
edgecls down) and, copied with `preprocessing.py` beside it, on a remote device over
SSH. It needs only the standard library, NumPy, and whichever runtime the device
has: ai-edge-litert (or tflite-runtime) for .tflite, onnxruntime for .onnx.

    python worker.py scores MODEL IMAGES.npy OUT.npy [--mode tf|caffe] [--threads N]
    python worker.py bench MODEL [--windows 5] [--window-seconds 2] [--runs 10] [--warmup 10]
                                 [--threads N] [--images IMAGES.npy]

`scores` writes float scores for uint8 images (preprocessed here); `bench` prints
one JSON object. Its method is the field's (MLPerf Tiny / EEMBC: several timed windows
after warm-up, the median of the windows; TFLite `benchmark_model`: warm-up runs,
explicit threads, the input already in the model's type): the process is pinned to
`threads` cores where the OS allows, the timed region is the inference alone (LiteRT
`set_tensor` + `invoke`; ONNX Runtime `run_with_iobinding` on bound buffers), and the
end-to-end figure with the float<->int8 conversion is reported apart. Also: load
time, peak resident memory, the CPU, core count and library versions. Errors print
`{"error": ...}` and exit 3.
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


def _interpreter_class():
    """LiteRT's `Interpreter` class and the runtime's name: ai-edge-litert, else tflite-runtime, else tensorflow.lite."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ImportError:
        pass
    try:
        from tensorflow.lite import Interpreter

        return Interpreter, "tensorflow.lite"
    except ImportError:
        raise WorkerError("no TFLite runtime on this device: pip install ai-edge-litert (or tflite-runtime)") from None


def _litert(path: str, threads: int | None, reference_kernels: bool = False):
    """A LiteRT interpreter for `path` and the runtime's name; `reference_kernels`: TFLite's reference
    kernels (`OpResolverType.BUILTIN_REF`, no XNNPACK), which TFLite Micro's match bit for bit."""
    interpreter, name = _interpreter_class()
    options: dict = {"num_threads": threads}
    if reference_kernels:
        if name != "ai-edge-litert":
            raise WorkerError("LiteRT's reference kernels need ai-edge-litert: pip install ai-edge-litert")
        from ai_edge_litert.interpreter import OpResolverType

        options, name = {"experimental_op_resolver_type": OpResolverType.BUILTIN_REF}, f"{name} (reference kernels)"
    try:
        return interpreter(model_path=path, **options), name
    except (ValueError, RuntimeError) as exc:
        raise WorkerError(f"LiteRT cannot load {os.path.basename(path)}: {str(exc).splitlines()[0]}") from None


class TFLiteModel:
    def __init__(self, path: str, threads: int | None, reference_kernels: bool = False):
        self.interpreter, self.runtime = _litert(path, threads, reference_kernels)
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

    def inference(self, images: np.ndarray):
        """A no-argument callable running only the inference on `images`, already in the model's input type."""
        self.run(images)  # sizes the tensors
        data = images.astype(np.float32)
        if self.input["dtype"] != np.float32:
            data = quantize(images, *self.input["quantization"], self.input["dtype"])
        interpreter, index = self.interpreter, self.input["index"]

        def infer():
            interpreter.set_tensor(index, data)
            interpreter.invoke()

        return infer


def onnx_session_options(ort, threads: int | None = None, exact_int8: bool = True):
    """ONNX Runtime session options: `threads`, and exact int8 products on x86 CPUs without VNNI.

    On those CPUs (SSE4.1, AVX2, AVX-512 without VNNI) ONNX Runtime's int8 kernels add pairs of
    uint8 x int8 products in 16 bits, which saturate where weights are large: a MobileNetV2 int8
    file scored 1.66 points under Keras there and 0.45 with this option (docs/model_zoo.md).
    `session.x64quantprecision` computes those layers as uint8 x uint8; other CPUs ignore it.
    """
    options = ort.SessionOptions()
    if exact_int8:
        options.add_session_config_entry("session.x64quantprecision", "1")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def _onnx_session(ort, path: str, threads: int | None, exact_int8: bool = True):
    """A CPU InferenceSession for `path`; WorkerError (one line) when ONNX Runtime refuses the file."""
    options = onnx_session_options(ort, threads, exact_int8)
    if exact_int8:
        options.log_severity_level = 4  # fatal only: OnnxModel retries a failed exact load, so its error is not news
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/...
        raise WorkerError(f"ONNX Runtime cannot load {os.path.basename(path)}: {str(exc).splitlines()[0]}") from None


class OnnxModel:
    """An ONNX file in an ONNX Runtime CPU session, int8 products exact where the file allows.

    ONNX Runtime's exact int8 mode cannot load files whose int8 weights share an
    initializer (tf2onnx writes those; edgecls' own exports do not, see
    `edgecls.export.onnx.unshare_weight_initializers`): those load with the default
    kernels instead, and `runtime` says so.
    """

    def __init__(self, path: str, threads: int | None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise WorkerError("no ONNX runtime on this device: pip install onnxruntime") from None
        self.runtime = f"onnxruntime {ort.__version__}"
        try:
            self.session = _onnx_session(ort, path, threads)
        except WorkerError:
            self.session = _onnx_session(ort, path, threads, exact_int8=False)
            self.runtime += " (saturating x86 int8 kernels)"
        self.name = self.session.get_inputs()[0].name
        self.version = ort.__version__
        self.input = {"shape": [1, *self.session.get_inputs()[0].shape[1:]]}

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.name: images.astype(np.float32)})[0]

    def inference(self, images: np.ndarray):
        """A no-argument callable running only the inference: input and output bound once (IOBinding)."""
        binding = self.session.io_binding()
        data = np.ascontiguousarray(images, dtype=np.float32)
        binding.bind_cpu_input(self.name, data)
        for output in self.session.get_outputs():
            binding.bind_output(output.name, "cpu")
        session = self.session

        def infer():
            session.run_with_iobinding(binding)

        infer()  # the first run allocates the bound outputs
        return infer


def open_model(path: str, threads: int | None):
    if path.endswith(".tflite"):
        return TFLiteModel(path, threads)
    if path.endswith(".onnx"):
        return OnnxModel(path, threads)
    raise WorkerError(f"unknown model type: {path}")


def scores(args) -> dict:
    if args.reference_kernels and not args.model.endswith(".tflite"):
        raise WorkerError("--reference-kernels is for .tflite files")
    model = TFLiteModel(args.model, args.threads, True) if args.reference_kernels else open_model(args.model, args.threads)
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


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo; `platform.processor()` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a measurement depends on (not imported: metadata only)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("numpy", "ai-edge-litert", "tflite-runtime", "tensorflow", "onnxruntime"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def pin_to_cores(threads: int | None) -> list[int] | None:
    """Pin this process to its first `threads` allowed cores (Linux); the cores used, or None if not pinned.

    Pinning keeps the scheduler from migrating the runtime's threads between cores
    mid-window, one of the sources of window-to-window spread.
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[: max(1, threads or len(allowed))]
    try:
        os.sched_setaffinity(0, chosen)
    except OSError:
        return None
    return chosen


def timed_windows(infer, *, windows: int, seconds: float, min_runs: int) -> list[np.ndarray]:
    """Latencies (ms) of `infer`, in `windows` windows of at least `seconds` and `min_runs` runs each."""
    clock = time.perf_counter
    out = []
    for _ in range(windows):
        times = []
        start = clock()
        while len(times) < min_runs or clock() - start < seconds:
            begin = clock()
            infer()
            times.append(clock() - begin)
        out.append(np.array(times) * 1000)
    return out


def latency_summary(windows: list[np.ndarray]) -> dict:
    """The median of the windows' medians (the figure), their spread, and percentiles over all runs."""
    medians = np.array([np.median(w) for w in windows])
    every = np.concatenate(windows)
    p50 = float(np.median(medians))
    return {
        "p50_ms": p50,
        "window_p50_ms": [float(m) for m in medians],
        "window_spread_pct": float((medians.max() - medians.min()) / p50 * 100),
        "p90_ms": float(np.percentile(every, 90)),
        "p99_ms": float(np.percentile(every, 99)),
        "mean_ms": float(every.mean()),
        "runs": int(len(every)),
        "images_per_second": float(1000 / p50),
    }


def bench(args) -> dict:
    pinned = pin_to_cores(args.threads)
    start = time.perf_counter()
    model = open_model(args.model, args.threads)
    if args.images:
        sample = preprocess(np.load(args.images)[:1], args.mode)
    else:
        shape = [1, *[int(d) for d in model.input["shape"][1:]]]
        sample = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    model.run(sample)
    load = time.perf_counter() - start
    infer = model.inference(sample)
    for _ in range(args.warmup):
        infer()
    result = latency_summary(timed_windows(infer, windows=args.windows, seconds=args.window_seconds, min_runs=args.runs))
    end_to_end = timed_windows(lambda: model.run(sample), windows=1, seconds=args.window_seconds, min_runs=args.runs)[0]
    return {
        "runtime": model.runtime,
        "threads": args.threads,
        "pinned_cores": pinned,
        "load_seconds": load,
        **result,
        "windows": args.windows,
        "window_seconds": args.window_seconds,
        "warmup": args.warmup,
        "end_to_end_p50_ms": float(np.median(end_to_end)),
        "peak_rss_mib": peak_rss_kib() / 1024,
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "versions": library_versions(),
    }


def read_answer(stdout: str) -> dict | None:
    """The worker's answer: the JSON object on the last line of its stdout, or None when there is none.

    The one parser of this protocol, for local children and SSH devices alike: a runtime may print
    to stdout before the answer, so only the last line counts.
    """
    lines = stdout.strip().splitlines()
    if not lines or not lines[-1].startswith("{"):
        return None
    try:
        answer = json.loads(lines[-1])
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


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
            command.add_argument("--reference-kernels", action="store_true", help="LiteRT's reference kernels (.tflite)")
        else:
            command.add_argument("--windows", type=int, default=5)
            command.add_argument("--window-seconds", type=float, default=2.0)
            command.add_argument("--runs", type=int, default=10, help="at least this many runs per window")
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
