"""How long converting and loading a model take: tf-keras' own paths against edgecls' (2026-11-30 changes).

- TFLite conversion: `TFLiteConverter.from_keras_model` saves the whole tf-keras model as a SavedModel
  first (tracing every layer again); `edgecls.export.tflite.convert` (through `keras_converter`) saves
  one serving function over the model's variables. The two int8 files are checked equal in size.
- Loading a `.keras` file: `tf_keras.models.load_model` reads the weights inside the zip archive;
  `edgecls.modelfile.load_keras_model` extracts them first.

Each pair is timed alternately, `--repeats` times, and the median is reported.

Usage:
    python bench/convert_speed.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import git_sha, machine, today, write_section

from edgecls.export.tflite import convert
from edgecls.modelfile import load_keras_model
from edgecls.run import sha256_file

MODELS = {"MobileNet v1 0.25 @128": ("MobileNet", 0.25, 128), "MobileNetV2 1.0 @128": ("MobileNetV2", 1.0, 128),
          "ResNet50 @128": ("ResNet50", None, 128)}  # fmt: skip


def build(family: str, alpha: float | None, size: int):
    import tf_keras

    kwargs = {"alpha": alpha} if alpha else {}
    application = getattr(tf_keras.applications, family)
    base = application(input_shape=(size, size, 3), include_top=False, weights=None, pooling="avg", **kwargs)
    return tf_keras.Model(base.input, tf_keras.layers.Dense(10, activation="softmax")(base.output))


def keras_default_int8(model) -> bytes:
    """The conversion as the TFLite guide writes it (`from_keras_model`), with edgecls' int8 settings."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    return converter.convert()


def representative(model):
    shape = [1, *model.input_shape[1:]]

    def batches():
        rng = np.random.default_rng(0)
        for _ in range(4):
            yield [rng.uniform(-1, 1, shape).astype(np.float32)]

    return batches


def timed(function, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def measure(name: str, repeats: int) -> dict:
    import tf_keras

    model = build(*MODELS[name])
    seconds = {"from_keras_model": [], "keras_converter": [], "load_model": [], "load_keras_model": []}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"
        model.save(path)
        sha = sha256_file(path)
        for _ in range(repeats):
            took, slow = timed(keras_default_int8, model)
            seconds["from_keras_model"].append(took)
            took, fast = timed(lambda: convert(model, "int8", representative=representative(model)))
            seconds["keras_converter"].append(took)
            seconds["load_model"].append(timed(lambda: tf_keras.models.load_model(str(path), compile=False))[0])
            seconds["load_keras_model"].append(timed(lambda: load_keras_model(path, sha256=sha))[0])
    assert len(slow) == len(fast), (len(slow), len(fast))
    return {key: float(np.median(values)) for key, values in seconds.items()} | {"int8_bytes": len(fast)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    lines = [
        "## Conversion and loading speed (tf-keras' paths vs edgecls', 2026-11-30)",
        "",
        f"`python bench/convert_speed.py --repeats {args.repeats}` ({today()}, commit {git_sha()}, {machine()}; untrained"
        " models with a 10-class head, int8 conversion with 4 random calibration images; median of the repeats, each pair"
        " timed alternately). Both conversions give files of the same size (checked).",
        "",
        "| model | int8 bytes | `from_keras_model` s | edgecls `keras_converter` s | `tf_keras.models.load_model` s"
        " | edgecls `load_keras_model` s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in MODELS:
        row = measure(name, args.repeats)
        lines.append(f"| {name} | {row['int8_bytes']:,} | {row['from_keras_model']:.1f} | {row['keras_converter']:.1f}"
                     f" | {row['load_model']:.1f} | {row['load_keras_model']:.1f} |")  # fmt: skip
    write_section("convert-speed", "\n".join(lines))


if __name__ == "__main__":
    main()
