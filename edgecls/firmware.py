"""The firmware stage: TensorFlow Lite Micro assets with a MEASURED tensor arena.

From a run's int8 TFLite export, writes `runs/<name>/firmware/<stage>/`:

    model_data.h / model_data.cc   the flatbuffer as a 16-byte aligned const array
    model_settings.h               input/output shape, scale, zero point, labels, arena size
    op_resolver.h                  MicroMutableOpResolver<N> with exactly the model's ops
    README.md                      how to integrate them
    firmware.json                  arena (measured and with margin), flash, TFLM parity

The arena is found on the real TFLM interpreter (the `tflite-micro` package runs
TFLM's kernels on the host): what its `RecordingMicroAllocator` reports after allocating
and invoking in a large arena, checked to allocate AND invoke at that size (to 16 bytes;
`edgecls.runtimes.measure_arena`; equal to the bisected minimum on the default model, and
it never probes the too-small arenas that crashed TFLM on a channel-pruned model). Host pointers are 8 bytes
against 4 on a Cortex-M, so the host figure is an upper bound of the device's;
a safety margin (default 10 %) is added on top and both numbers are reported.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

import numpy as np

from edgecls import __version__
from edgecls.config import FirmwareConfig
from edgecls.errors import ConfigError, IntegrityError, RunError
from edgecls.escape import c_comment, c_string
from edgecls.export import STAGE_ORDER
from edgecls.preprocessing import formula
from edgecls.records import ExportedFile, exported_files
from edgecls.run import (
    RunDir,
    atomic_write_json,
    atomic_write_text,
    check_writable,
    sha256_file,
    staged_folder,
)
from edgecls.runtimes import ALIGN, MAX_ARENA, fits, measure_arena, tflm_interpreter  # noqa: F401 (fits: API)

TEMPLATES = Path(__file__).resolve().parent / "templates"  # package data: present in a wheel install too
C_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CPP_KEYWORDS = frozenset(
    """alignas alignof and asm auto bool break case catch char class const constexpr continue decltype default delete do
    double else enum explicit export extern false float for friend goto if inline int long mutable namespace new
    noexcept not nullptr operator or private protected public register return short signed sizeof static struct
    switch template this throw true try typedef typename union unsigned using virtual void volatile while""".split()  # noqa: SIM905
)
# TFLite builtin op -> MicroMutableOpResolver call (the ops edgecls' models can contain).
TFLM_OPS = {
    "ADD": "AddAdd",
    "AVERAGE_POOL_2D": "AddAveragePool2D",
    "CONCATENATION": "AddConcatenation",
    "CONV_2D": "AddConv2D",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "DEQUANTIZE": "AddDequantize",
    "FULLY_CONNECTED": "AddFullyConnected",
    "HARD_SWISH": "AddHardSwish",
    "LOGISTIC": "AddLogistic",
    "MAX_POOL_2D": "AddMaxPool2D",
    "MEAN": "AddMean",
    "MUL": "AddMul",
    "PAD": "AddPad",
    "QUANTIZE": "AddQuantize",
    "RELU": "AddRelu",
    "RELU6": "AddRelu6",
    "RESHAPE": "AddReshape",
    "SOFTMAX": "AddSoftmax",
    "SQUEEZE": "AddSqueeze",
}


def model_ops(flatbuffer: bytes) -> list[str]:
    """Builtin op names the model uses, sorted."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    used = set()
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            used.add(names[max(code.builtinCode, code.deprecatedBuiltinCode)])
    return sorted(used)


def analyze(flatbuffer: bytes, floats: np.ndarray, name: str) -> dict[str, Any]:
    """Every native step on the model, meant for a child process (`call_isolated`): a corrupt file may crash them.

    Checks it is a TFLM-ready int8 model, measures the arena, and scores `floats` (preprocessed
    test images) on TFLM and on LiteRT's reference kernels with the same quantized inputs.
    """
    from edgecls.worker import quantize

    details = check_int8(flatbuffer, name)
    measured = measure_arena(flatbuffer)
    inputs = quantize(floats, *details["input"]["quantization"], details["input"]["dtype"])
    return {
        "input": {k: details["input"][k] for k in ("dtype", "quantization")},
        "output": {k: details["output"][k] for k in ("dtype", "quantization")},
        "ops": model_ops(flatbuffer),
        "arena_measured": measured,
        "micro": tflm_scores(flatbuffer, measured, inputs),
        "lite": litert_scores(flatbuffer, inputs),
    }


def tflm_scores(flatbuffer: bytes, arena: int, images: np.ndarray) -> np.ndarray:
    """Raw (quantized) TFLM outputs for already-quantized input images, one invoke each."""
    interpreter = tflm_interpreter(flatbuffer, arena)
    outputs = []
    for image in images:
        interpreter.set_input(image[None], 0)
        interpreter.invoke()
        outputs.append(np.array(interpreter.get_output(0))[0])
    return np.stack(outputs)


def litert_scores(flatbuffer: bytes, images: np.ndarray) -> np.ndarray:
    """Raw (quantized) LiteRT outputs for the same inputs, reference kernels (no XNNPACK)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=flatbuffer, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], [len(images), *detail["shape"][1:]])
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], images)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _c_array(data: bytes, per_line: int = 12) -> str:
    rows = (", ".join(f"0x{b:02x}" for b in data[i : i + per_line]) for i in range(0, len(data), per_line))
    return ",\n".join(f"    {row}" for row in rows)


def _render(template: str, values: dict[str, Any]) -> str:
    path = TEMPLATES / template
    if not path.exists():
        raise RunError(f"firmware template {path} is missing: the edgecls installation is incomplete; reinstall it.")
    return string.Template(path.read_text()).substitute(values)


def harness_defines(namespace: str | None, prefix: str) -> list[str]:
    """The -D flags that name the generated symbols for firmware_assets/host_harness/harness.cc."""
    scope = f"{namespace}::" if namespace else ""
    names = {"DATA": "model_data", "DATA_LEN": "model_data_len", "ARENA": "kTensorArenaSize", "CLASSES": "kNumClasses"}
    return [f"-DEDGECLS_{key}={scope}{prefix}{name}" for key, name in names.items()]


def write_assets(folder: Path, flatbuffer: bytes, info: dict[str, Any], *, namespace: str | None, prefix: str) -> list[str]:
    """Render every template into `folder`; returns the file names."""
    from tflite_micro.python.tflite_micro import _version

    guard = (namespace or prefix.rstrip("_") or "edgecls").upper()
    common = {
        "version": __version__,
        "source": c_comment(info["source"]),
        "bytes": len(flatbuffer),
        "sha256": info["sha256"],
        "guard": guard,
        "prefix": prefix,
        "namespace_open": f"namespace {namespace} {{\n" if namespace else "",
        "namespace_close": f"\n}}  // namespace {namespace}\n" if namespace else "",
    }
    files = {
        "model_data.h": _render("model_data.h.tmpl", common),
        "model_data.cc": _render("model_data.cc.tmpl", {**common, "array": _c_array(flatbuffer)}),
        "model_settings.h": _render(
            "model_settings.h.tmpl",
            {
                **common,
                **info["settings"],
                "tflm_version": getattr(_version, "__version__", "?"),
                "labels": ", ".join(c_string(label) for label in info["labels"]),
            },
        ),
        "op_resolver.h": _render(
            "op_resolver.h.tmpl",
            {
                **common,
                "count": len(info["ops"]),
                "adds": "\n".join(f"  TF_LITE_ENSURE_STATUS(resolver.{TFLM_OPS[op]}());" for op in info["ops"]),
            },
        ),
    }
    files["README.md"] = (TEMPLATES / "README.md").read_text()
    for name, text in files.items():
        atomic_write_text(folder / name, text)
    return sorted(files)


def _int8_export(run: RunDir, stage: str | None) -> tuple[str, ExportedFile]:
    """The int8 TFLite file of `stage`'s export (default: the most optimized one exported)."""
    order = [stage] if stage else list(STAGE_ORDER)
    for candidate in order:
        if run.stage(f"export/{candidate}") is None:
            continue
        for artifact in exported_files(run, candidate):
            if artifact.file == "model_int8.tflite":
                return candidate, artifact
    raise RunError(f"run {run.path} has no int8 TFLite model: run `edgecls export {run.path} --int8` first.")


def check_int8(flatbuffer: bytes, name: str) -> dict[str, Any]:
    """Input/output details of a full-integer model.

    Raises:
        ConfigError: a float input or output, or ops TFLM cannot run (all listed).
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    if inp["dtype"] not in (np.int8, np.uint8) or out["dtype"] not in (np.int8, np.uint8):
        raise ConfigError(
            f"{name} has {np.dtype(inp['dtype']).name} input and {np.dtype(out['dtype']).name} output; "
            "TFLM firmware needs the full-integer model (`edgecls export RUN --int8 --io int8`)."
        )
    unsupported = [op for op in model_ops(flatbuffer) if op not in TFLM_OPS]
    if unsupported:
        raise ConfigError(f"{name} uses ops edgecls cannot register in TFLM: {', '.join(unsupported)}.")
    float_layers = _float_weighted_ops(interpreter)
    if float_layers:
        raise ConfigError(
            f"{name} keeps {len(float_layers)} layer(s) in float ({', '.join(float_layers[:3])}): not deployable to "
            "TFLite Micro int8-only targets; export without `--fallback`/`--float-layers`, or quantization-aware train "
            "(`edgecls optimize RUN --qat`) to keep every layer int8."
        )
    return {"input": inp, "output": out}


def _float_weighted_ops(interpreter) -> list[str]:
    """Output tensor names of conv / fully-connected ops whose weights are float (an int8 fallback's float layers)."""
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    found = []
    for op in interpreter._get_ops_details():
        weighted = op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and len(op["inputs"]) > 1
        if weighted and tensors[op["inputs"][1]]["dtype"] == np.float32:
            found.append(tensors[op["outputs"][0]]["name"].split(";")[0] or f"op {op['index']}")
    return found


def _input_size(flatbuffer: bytes, path: Path) -> int:
    """The square input side of the file (a stage of `--fit` may take another size than the fine-tuned model)."""
    from edgecls.export.tflite import input_shape

    try:
        shape = input_shape(flatbuffer)
    except Exception as exc:  # a malformed flatbuffer: the parser raises anything from IndexError to struct.error
        raise ConfigError(f"{path} is not a readable TFLite model ({type(exc).__name__}).") from None
    if len(shape) != 4 or shape[1] != shape[2] or not 1 <= shape[1] <= 4096 or shape[3] != 3:
        raise ConfigError(f"{path} takes input of shape {shape}; edgecls firmware expects [1, N, N, 3] images.")
    return shape[1]


def run_firmware(
    run_path: str | Path,
    cfg: FirmwareConfig | None = None,
    *,
    model: str | Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write TFLM firmware assets for a run's int8 model, with a measured arena and TFLM parity.

    Args:
        run_path: A run folder with an int8 export.
        cfg: The `firmware` config section (stage, namespace, prefix, arena margin, parity images,
            device profile); None for the defaults.
        model: Another .tflite file instead of the run's export (its labels come from the run).
        force: Replace earlier assets of the same stage.

    Raises:
        RunError: no int8 export, or assets exist without `force`.
        ConfigError: a float model, ops TFLM does not support, an unknown device, a bad option.
        StageError: the arena search cannot allocate even at 64 MiB.
    """
    from edgecls.data import load_split
    from edgecls.data.pipeline import preprocess_numpy
    from edgecls.devices import load_profile
    from edgecls.runtimes import call_isolated

    cfg = cfg or FirmwareConfig()
    stage, prefix, margin, parity_images = cfg.stage, cfg.prefix, cfg.arena_margin, cfg.parity_images
    namespace = None if cfg.namespace == "none" else cfg.namespace
    if namespace is not None and not (C_IDENTIFIER.fullmatch(namespace) and namespace not in CPP_KEYWORDS):
        raise ConfigError(f"`--namespace` must be an ASCII C++ identifier (not a keyword), or `none`; got {namespace!r}.")
    if prefix and not C_IDENTIFIER.fullmatch(prefix):
        raise ConfigError(f"`--prefix` must be an ASCII C identifier prefix such as g_; got {prefix!r}.")
    profile = load_profile(cfg.device) if cfg.device else None
    run = RunDir(run_path)
    record = run.finetune_record()
    if model is not None:
        stage, path = stage or "custom", Path(model)
        if not path.is_file():
            raise ConfigError(f"`--model` must be an existing .tflite file; got {str(path)!r}.")
    else:
        stage, artifact = _int8_export(run, stage)
        path = artifact.path
        problem = artifact.problem()
        if problem:
            raise IntegrityError(f"{path}: {problem}; re-export it with `edgecls export {run.path} --force`.")
    key = f"firmware/{stage}"
    if run.stage(key) is not None and not force:
        raise RunError(f"run {run.path} already has firmware assets for `{stage}`; pass `--force` to rebuild them.")
    flatbuffer = path.read_bytes()
    if len(flatbuffer) < 8 or flatbuffer[4:8] != b"TFL3":
        raise ConfigError(f"{path} is not a TFLite flatbuffer (no TFL3 identifier).")
    check_writable(run.path, "fix the run folder's permissions or free some space")

    size = _input_size(flatbuffer, path)
    per_class = -(-parity_images // len(record.class_names))
    split, _ = load_split(record.data(test_limit_per_class=per_class), size, record.seed, "test")
    pick = np.arange(len(split))[:parity_images]
    floats = preprocess_numpy(split.images[pick], record.preprocessing)
    found = call_isolated(analyze, flatbuffer, floats, path.name)  # a crash is a failed stage, not a dead edgecls
    details, measured, micro, lite = found, found["arena_measured"], found["micro"], found["lite"]
    arena = -(-int(measured * (1 + margin)) // ALIGN) * ALIGN
    difference = np.abs(micro.astype(np.int32) - lite.astype(np.int32))
    out_scale, out_zero = details["output"]["quantization"]
    parity = {
        "images": int(len(pick)),
        "bit_exact_fraction": float(np.mean(np.all(difference == 0, axis=1))),
        "max_abs_diff_quantized": int(difference.max()),
        "max_abs_diff_score": float(difference.max() * out_scale),
        "top1_agreement": float(np.mean(micro.argmax(1) == lite.argmax(1))),
        "tflm_accuracy": float(np.mean(micro.argmax(1) == split.labels[pick])),
        "litert_accuracy": float(np.mean(lite.argmax(1) == split.labels[pick])),
    }
    in_scale, in_zero = details["input"]["quantization"]
    info = {
        "source": str(path.relative_to(run.path)) if path.is_relative_to(run.path) else str(path),
        "sha256": sha256_file(path),
        "labels": list(record.class_names),
        "ops": found["ops"],
        "settings": {
            "input_height": size,
            "input_width": size,
            "input_channels": 3,
            "input_type": np.dtype(details["input"]["dtype"]).name,
            "output_type": np.dtype(details["output"]["dtype"]).name,
            "input_scale": repr(float(in_scale)),
            "input_zero_point": int(in_zero),
            "output_scale": repr(float(out_scale)),
            "output_zero_point": int(out_zero),
            "num_classes": len(record.class_names),
            "normalization": formula(record.preprocessing),
            "arena_measured": measured,
            "arena_size": arena,
            "margin_percent": round(margin * 100),
        },
    }
    with staged_folder(run.file(f"firmware/{stage}")) as tmp:
        files = write_assets(tmp, flatbuffer, info, namespace=namespace, prefix=prefix)
        summary = {
            "stage": stage,
            "model": info["source"],
            "flash_bytes": len(flatbuffer),
            "arena_bytes_measured": measured,
            "arena_bytes": arena,
            "arena_margin": margin,
            "ops": info["ops"],
            "parity": parity,
            "namespace": namespace,
            "prefix": prefix,
            "harness_defines": harness_defines(namespace, prefix),
        }
        if profile:
            if profile.kind != "mcu":
                raise ConfigError(f"`--device` must be a microcontroller profile for firmware; {profile.name} is {profile.kind}.")
            summary["device"] = {
                "profile": profile.name,
                "flash_budget": profile.flash_bytes,
                "ram_budget": profile.ram_bytes,
                "flash_ok": len(flatbuffer) <= profile.flash_bytes,
                "ram_ok": arena <= profile.ram_bytes,
            }
        atomic_write_json(tmp / "firmware.json", summary)
    outputs = [f"firmware/{stage}/{name}" for name in [*files, "firmware.json"]]
    inputs = {"model": info["source"], "model_sha256": info["sha256"]}
    return run.record_stage(key, seed=record.seed, inputs=inputs, outputs=outputs,
                            metrics=summary, warnings=[])  # fmt: skip
