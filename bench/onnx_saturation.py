"""ONNX Runtime's int8 accuracy on x86 CPUs without VNNI: the same file with and without `session.x64quantprecision`.

On SSE4.1/AVX2/AVX-512 CPUs without VNNI, ONNX Runtime multiplies uint8 activations by int8 weights
with an instruction that saturates 16-bit pair sums; the session option `session.x64quantprecision=1`
computes uint8 x uint8 instead where the weights need it. This script scores a run's int8 ONNX file
on all test images both ways, so the two numbers differ only on a host that saturates. The
precise session reads the file with its int8 weights' initializers unshared, as edgecls now
exports them (that mode cannot load QAT files written before, where tf2onnx shared them).

Usage (from the checkout):
    python bench/onnx_saturation.py bench-runs/zoo/mnv2-160 [--stage finetune]
    python bench/onnx_saturation.py bench-runs/zoo/mcu-distilled-t160 --stage qat
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def accuracy(path: Path, images: np.ndarray, labels: np.ndarray, *, precise: bool) -> float:
    """Top-1 of an ONNX file on preprocessed `images`: in a session as edgecls opens it, or with ONNX Runtime's defaults."""
    import onnx
    import onnxruntime as ort

    from edgecls.export.onnx import unshare_weight_initializers
    from edgecls.worker import onnx_session_options

    if precise:  # as edgecls exports and opens it
        model = unshare_weight_initializers(onnx.load(str(path))).SerializeToString()
        session = ort.InferenceSession(model, onnx_session_options(ort, threads=2), providers=["CPUExecutionProvider"])
    else:  # ONNX Runtime's defaults
        session = ort.InferenceSession(str(path), ort.SessionOptions(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    scores = np.concatenate([session.run(None, {name: images[i : i + 100]})[0] for i in range(0, len(images), 100)])
    return float((scores.argmax(axis=1) == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--stage", default="finetune")
    args = parser.parse_args()

    from edgecls.data import load_split
    from edgecls.data.pipeline import preprocess_numpy
    from edgecls.models.resize import input_size_of
    from edgecls.run import RunDir

    run = RunDir(args.run)
    record = run.finetune_record()
    size = input_size_of(run.load_model(args.stage)[0])
    split, _ = load_split(record.data(), size, record.seed, "test")
    images = preprocess_numpy(split.images, record.preprocessing).astype(np.float32)
    folder = run.path / "export" / args.stage
    for precise in (False, True):
        top1 = accuracy(folder / "model_int8.onnx", images, split.labels, precise=precise)
        print(f"model_int8.onnx, x64quantprecision={int(precise)}: {top1:.4f}")


if __name__ == "__main__":
    main()
