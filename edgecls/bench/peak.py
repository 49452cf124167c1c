"""The compute bound: a model's MACs over the runtime's own peak GEMM rate on the same device.

A NumPy matrix product is not the peak of a CPU (its BLAS build, `OPENBLAS_CORETYPE`,
threads), and dividing by it gave bounds ten times *above* the measured latency. The
peak here is measured the way the model runs: a large fully-connected layer (one GEMM,
the most efficient kernel a runtime has) converted to fp32 and to int8 TFLite and
timed by the same worker, at the same thread count, on the same device (XNNPACK or
the runtime's own kernels, whichever LiteRT picks for both). A bound is shown only
where it is below the measurement, as a bound must be.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

ROWS, DEPTH, COLUMNS = 64, 1024, 1024  # one GEMM of 67 M multiply-accumulates
GEMM_MACS = ROWS * DEPTH * COLUMNS


def gemm_tflite(precision: str) -> bytes:
    """A one-layer TFLite model: [ROWS, DEPTH] @ [DEPTH, COLUMNS], in fp32 or full int8."""
    import tensorflow as tf

    weights = tf.constant(np.random.default_rng(0).normal(0, 0.05, (DEPTH, COLUMNS)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, ROWS, DEPTH], tf.float32)])  # batch 1, as the worker runs models
    def gemm(x):
        return tf.einsum("bij,jk->bik", x, weights)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([gemm.get_concrete_function()], gemm)
    if precision == "int8":
        rng = np.random.default_rng(1)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([rng.uniform(-1, 1, (1, ROWS, DEPTH)).astype(np.float32)] for _ in range(4))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8
    return converter.convert()


def gemm_files(scratch: Path) -> dict[str, Path]:
    """`gemm_fp32.tflite` and `gemm_int8.tflite` by precision: converted once per TensorFlow version and kept in
    the user's cache (`$XDG_CACHE_HOME/edgecls/gemm`), or in `scratch` when the cache cannot be written."""
    import tensorflow as tf

    from edgecls.console import quiet_native
    from edgecls.data.stream import default_cache_dir
    from edgecls.errors import RunError
    from edgecls.run import atomic_write_bytes

    folder = default_cache_dir() / "gemm" / f"tf{tf.__version__}-{ROWS}x{DEPTH}x{COLUMNS}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = scratch
    paths = {}
    for precision in ("fp32", "int8"):
        paths[precision] = folder / f"gemm_{precision}.tflite"
        if paths[precision].is_file():
            continue
        with quiet_native(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Statistics for quantized inputs were expected": a GEMM needs none
            data = gemm_tflite(precision)
        try:
            atomic_write_bytes(paths[precision], data)
        except (OSError, RunError):
            paths[precision] = scratch / paths[precision].name
            paths[precision].write_bytes(data)
    return paths


def peak_macs_per_second(measured: dict) -> float:
    """MACs per second of a GEMM file from its worker measurement: its fastest window (a peak, not a typical rate)."""
    return GEMM_MACS / (min(measured["window_p50_ms"]) / 1000)


def compute_bound_ms(macs: int | None, peak: float | None, p50_ms: float) -> float | None:
    """MACs / peak in ms, or None when unknown or not below the measurement (then it bounds nothing)."""
    if not macs or not peak:
        return None
    bound = macs / peak * 1000
    return bound if bound <= p50_ms else None


__all__ = ["GEMM_MACS", "compute_bound_ms", "gemm_files", "gemm_tflite", "peak_macs_per_second"]
