"""Runners: one small interface over Keras, LiteRT, ONNX Runtime and TFLite Micro.

Every runner takes preprocessed float32 images [N, H, W, 3] and returns float
scores [N, classes]; quantized inputs and outputs (scale, zero point) are
handled inside. `run(images)` runs a batch, `close()` releases it.

LiteRT is `ai_edge_litert`, falling back to `tflite_runtime` (old devices), then
`tensorflow.lite`. The LiteRT and ONNX Runtime runners live in the
self-contained `edgecls.worker` (it is copied to remote devices as one file);
`isolated_scores` runs them in a child process so a native crash on a corrupt
model file becomes an error message, not the end of edgecls.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecls.errors import StageError
from edgecls.worker import OnnxModel, TFLiteModel, WorkerError, dequantize, open_model, quantize, read_answer

__all__ = [
    "KerasRunner", "LatencyMethod", "OnnxModel", "TFLMRunner", "TFLiteModel", "WorkerError", "call_isolated",
    "isolated_latency", "isolated_scores", "open_runner", "predict", "tflm_scores_isolated",
]  # fmt: skip


def open_runner(path: str | Path, threads: int | None = None):
    """A LiteRT or ONNX Runtime runner for `path`, chosen by its suffix."""
    return open_model(str(path), threads)


class KerasRunner:
    """The reference: a tf-keras model."""

    runtime = "keras"

    def __init__(self, model):
        self.model = model

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.model.predict(images, batch_size=128, verbose=0)

    def close(self) -> None:
        self.model = None


class TFLMRunner:
    """An int8 .tflite file on the TFLite Micro interpreter (reference kernels, host build).

    Args:
        path: The model file.
        arena: Tensor arena in bytes; default 10x the file size (TFLM's own heuristic).
    """

    runtime = "tflite-micro"

    def __init__(self, path: str | Path, arena: int | None = None):
        from tflite_micro.python.tflite_micro import runtime

        data = Path(path).read_bytes()
        self.interpreter = runtime.Interpreter.from_bytes(data, arena_size=arena or 10 * len(data))
        self.input = self.interpreter.get_input_details(0)
        self.output = self.interpreter.get_output_details(0)

    def _params(self, detail):
        params = detail["quantization_parameters"]
        return float(params["scales"][0]), int(params["zero_points"][0])

    def run(self, images: np.ndarray) -> np.ndarray:
        data = quantize(images, *self._params(self.input), self.input["dtype"])
        scores = []
        for image in data:
            self.interpreter.set_input(image[None], 0)
            self.interpreter.invoke()
            scores.append(np.array(self.interpreter.get_output(0))[0])
        return dequantize(np.stack(scores), *self._params(self.output))

    def close(self) -> None:
        self.interpreter = None


def predict(runner, images: np.ndarray, batch_size: int = 64, mode: str | None = None) -> np.ndarray:
    """Scores of `runner` over images, in batches.

    `images` are preprocessed float images, or with `mode` (a preprocessing mode) the uint8 images,
    preprocessed one batch at a time: a whole 224-px test split is 1.5 GB as uint8 and 6 GB as
    float32, which together with a fine-tune's memory exhausted a 24 GiB machine.
    """
    from edgecls.preprocessing import normalize_numpy

    def batch(start: int) -> np.ndarray:
        chunk = images[start : start + batch_size]
        return chunk if mode is None else normalize_numpy(chunk, mode)

    return np.concatenate([runner.run(batch(start)) for start in range(0, len(images), batch_size)])


def _child(connection, function, args) -> None:
    """Run `function(*args)` in the child; send back ("ok", value), ("raise", edgecls error) or ("error", message)."""
    from edgecls.errors import EdgeclsError
    from edgecls.run import quiet_native_stderr

    try:
        with quiet_native_stderr():
            connection.send(("ok", function(*args)))
    except EdgeclsError as exc:  # a clear, expected refusal (a float model, say): the parent raises it as is
        connection.send(("raise", exc))
    except Exception as exc:  # the parent turns it into one WorkerError line
        connection.send(("error", f"{type(exc).__name__}: {str(exc).splitlines()[0][:240] if str(exc) else ''}"))
    finally:
        connection.close()


def call_isolated(function, *args, timeout: float = 1800):
    """`function(*args)` in a fresh (spawned) Python process, so a native crash cannot end edgecls.

    Args:
        function: A module-level function (it is pickled by name).
        args: Picklable arguments; the result must be picklable too.
        timeout: Seconds before the child is killed.

    Raises:
        WorkerError: the function raised (its message), the child crashed (the signal is named) or timed out.
    """
    import multiprocessing
    import signal

    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, function, args), daemon=True)
    process.start()
    send.close()
    try:
        if not receive.poll(timeout):
            process.kill()
            raise WorkerError(f"the runtime did not finish within {timeout:.0f} s")
        status, value = receive.recv()
    except EOFError:  # the child died without answering
        process.join(10)
        code = process.exitcode
        what = signal.Signals(-code).name if code is not None and code < 0 else f"exit status {code}"
        raise WorkerError(f"the runtime crashed ({what}) on this file") from None
    finally:
        process.join(10)
        receive.close()
    if status == "raise":
        raise value
    if status == "error":
        raise WorkerError(value)
    return value


def _tflm_scores(path: str, images: np.ndarray, arena: int | None) -> np.ndarray:
    runner = TFLMRunner(path, arena)
    return predict(runner, images)


def tflm_scores_isolated(path: str | Path, images: np.ndarray, arena: int | None = None) -> np.ndarray:
    """Float scores of an int8 .tflite file on TFLite Micro, for preprocessed float images, in a child process."""
    return call_isolated(_tflm_scores, str(path), images, arena)


def _run_worker(args: list[str], timeout: float) -> dict:
    """Run `python -m edgecls.worker ARGS` and return its JSON answer.

    Raises:
        WorkerError: the runtime refused the file, or the child crashed (the
            signal is named) or timed out.
    """
    command = [sys.executable, "-m", "edgecls.worker", *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise WorkerError(f"the runtime did not finish within {timeout:.0f} s") from None
    if done.returncode < 0:
        import signal

        raise WorkerError(f"the runtime crashed ({signal.Signals(-done.returncode).name}) on this file")
    result = read_answer(done.stdout) or {}
    if done.returncode != 0 or "error" in result:
        detail = result.get("error") or (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise WorkerError(str(detail)[:300])
    return result


def isolated_scores(
    path: str | Path, images: np.ndarray, *, mode: str, timeout: float = 1800, reference_kernels: bool = False
) -> np.ndarray:
    """Scores of a .tflite/.onnx file for uint8 images, computed in a child Python process.

    `reference_kernels` runs a .tflite file on TFLite's reference kernels instead of the optimized ones
    (XNNPACK, ruy): slower, and what TFLite Micro computes bit for bit.

    Raises:
        WorkerError: the runtime refused the file, or the child crashed or timed out.
    """
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "images.npy", Path(folder) / "scores.npy"
        np.save(source, images)
        kernels = ["--reference-kernels"] if reference_kernels else []
        _run_worker(["scores", str(path), str(source), str(target), "--mode", mode, *kernels], timeout)
        return np.load(target)


@dataclass(frozen=True)
class LatencyMethod:
    """How a latency is measured (`edgecls.worker bench`): warm-up runs, then timed windows.

    Attributes:
        windows: Timed windows; the figure is the median of their medians.
        window_seconds: Each window lasts at least this long...
        min_runs: ...and holds at least this many runs.
        warmup: Untimed runs first.
    """

    windows: int = 5
    window_seconds: float = 2.0
    min_runs: int = 10
    warmup: int = 10

    def worker_args(self) -> list[str]:
        """The worker's command-line flags for this method."""
        return ["--windows", str(self.windows), "--window-seconds", str(self.window_seconds),
                "--runs", str(self.min_runs), "--warmup", str(self.warmup)]  # fmt: skip


def isolated_latency(path: str | Path, *, threads: int, method: LatencyMethod, timeout: float = 1800) -> dict:
    """Latency of one .tflite/.onnx file on this host, measured in a child process pinned to `threads` cores.

    Raises:
        WorkerError: the runtime refused the file, or the child crashed or timed out.
    """
    return _run_worker(["bench", str(path), "--threads", str(threads), *method.worker_args()], timeout)


# --- TFLite Micro arena -------------------------------------------------------------------------------

MAX_ARENA = 64 << 20
ALIGN = 16


def tflm_interpreter(flatbuffer: bytes, arena: int):
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_bytes(flatbuffer, arena_size=arena)


def fits(flatbuffer: bytes, arena: int) -> bool:
    """True if the model allocates and invokes (on a zero input) with `arena` bytes."""
    from edgecls.run import quiet_native_stderr

    with quiet_native_stderr():
        try:
            interpreter = tflm_interpreter(flatbuffer, arena)
            detail = interpreter.get_input_details(0)
            interpreter.set_input(np.zeros(detail["shape"], detail["dtype"]), 0)
            interpreter.invoke()
        except RuntimeError:
            return False
    return True


def _recorded_arena(interpreter) -> int:
    """The arena bytes TFLM's `RecordingMicroAllocator` reports (`print_allocations` writes them on stderr)."""
    import os
    import re
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            interpreter.print_allocations()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        report = capture.read().decode(errors="replace")
    found = re.search(r"Arena allocation total (\d+) bytes", report)
    if found is None:
        raise StageError("TFLite Micro did not report its arena allocation.")
    return int(found.group(1))


def measure_arena(flatbuffer: bytes, upper: int = MAX_ARENA) -> int:
    """The arena (a multiple of 16 bytes) the model needs: TFLM's own record after allocating and invoking.

    The interpreter runs once in an arena large enough (1 MiB, doubled up to `upper`), and its
    `RecordingMicroAllocator` reports what it used; that size is checked to allocate and invoke, and
    when it does not, the smallest that does is bisected above it. (Bisecting from far below, as
    before, crashed TFLM on a channel-pruned model instead of failing to allocate.) On the default
    model the record equals the bisected minimum (160,992 B).

    Raises:
        StageError: it does not fit even in `upper` bytes.
    """
    from edgecls.run import quiet_native_stderr

    size = 1 << 20
    while size > upper or not fits(flatbuffer, size):
        if size >= upper:
            raise StageError(f"the model does not allocate in TFLM even with a {upper >> 20} MiB arena.")
        size = min(size * 2, upper)
    with quiet_native_stderr():
        interpreter = tflm_interpreter(flatbuffer, size)
        detail = interpreter.get_input_details(0)
        interpreter.set_input(np.zeros(detail["shape"], detail["dtype"]), 0)
        interpreter.invoke()
    measured = -(-_recorded_arena(interpreter) // ALIGN) * ALIGN
    if fits(flatbuffer, measured):
        return measured
    low, high = measured, size  # the record missed something (seen on small models): bisect above it
    while high - low > ALIGN:
        middle = (low + high) // 2 // ALIGN * ALIGN
        if middle <= low:
            break
        low, high = (low, middle) if fits(flatbuffer, middle) else (middle, high)
    return high


def measure_arena_isolated(flatbuffer: bytes, upper: int = MAX_ARENA) -> int:
    """`measure_arena` in a spawned child: a model that crashes TFLM is a `WorkerError`, not a dead process."""
    return call_isolated(measure_arena, flatbuffer, upper)


def measure_arenas(flatbuffers: list[bytes], upper: int = MAX_ARENA) -> list[int]:
    """`measure_arena` of each model, in order."""
    return [measure_arena(flatbuffer, upper) for flatbuffer in flatbuffers]


def measure_arenas_isolated(flatbuffers: list[bytes], upper: int = MAX_ARENA) -> list[int]:
    """`measure_arenas` in one spawned child (a search measures dozens: one process start-up, not one each)."""
    return call_isolated(measure_arenas, flatbuffers, upper)
