"""`edgecls firmware`: generated C++ compiles and matches the model, the arena is measured, TFLM parity."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from conftest import ROOT, finetune_tiny, run_cli
from edgecls.run import RunDir

pytestmark = pytest.mark.slow
HARNESS = ROOT / "firmware_assets" / "host_harness"


@pytest.fixture(scope="module")
def firmware_run(tmp_path_factory):
    """A tiny run exported to int8 and turned into firmware assets."""
    from edgecls.config import ExportConfig, FirmwareConfig
    from edgecls.export import run_export
    from edgecls.firmware import run_firmware

    run = finetune_tiny(tmp_path_factory.mktemp("firmware"))
    run_export(run, ExportConfig(formats=("tflite",), calibration_samples=12, check_per_class=6))
    entry = run_firmware(run, FirmwareConfig(parity_images=18, device="cortex-m4-nrf52840"))
    return RunDir(run), entry


def compile_and_run(folder, defines, tflite, tmp_path) -> subprocess.CompletedProcess:
    binary = tmp_path / "harness"
    command = ["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{folder}", *defines,
               str(HARNESS / "harness.cc"), str(folder / "model_data.cc"), "-o", str(binary)]  # fmt: skip
    build = subprocess.run(command, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    return subprocess.run([str(binary), str(tflite)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def gpp():
    if shutil.which("g++") is None:
        pytest.skip("needs the system g++")


def test_host_harness_passes(firmware_run, tmp_path, gpp):
    run, entry = firmware_run
    folder = run.file("firmware/finetune")
    result = compile_and_run(folder, entry["metrics"]["harness_defines"], run.file("export/finetune/model_int8.tflite"), tmp_path)
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("OK: ")


def test_harness_catches_a_different_model(firmware_run, tmp_path, gpp):
    run, entry = firmware_run
    other = tmp_path / "other.tflite"
    data = bytearray(run.file("export/finetune/model_int8.tflite").read_bytes())
    data[-1] ^= 0xFF
    other.write_bytes(bytes(data))
    result = compile_and_run(run.file("firmware/finetune"), entry["metrics"]["harness_defines"], other, tmp_path)
    assert result.returncode == 1 and "FAIL content" in result.stdout


def test_generated_headers_compile_strictly(firmware_run, tmp_path, gpp):
    run, _ = firmware_run
    folder = run.file("firmware/finetune")
    source = tmp_path / "use.cc"
    source.write_text(
        '#include "model_settings.h"\n#include "op_resolver.h"\n'
        "int main() {\n  edgecls_model::ModelOpResolver resolver;\n"
        "  return edgecls_model::RegisterModelOps(resolver) == kTfLiteOk ? edgecls_model::kNumClasses - 3 : 1;\n}\n"
    )
    command = ["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{folder}", f"-I{HARNESS / 'stub'}",
               str(source), "-o", str(tmp_path / "use")]  # fmt: skip
    build = subprocess.run(command, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    assert subprocess.run([str(tmp_path / "use")]).returncode == 0  # resolver size == op count, 3 classes


def test_files_and_settings(firmware_run):
    run, entry = firmware_run
    folder = run.file("firmware/finetune")
    metrics = entry["metrics"]
    data = run.file("export/finetune/model_int8.tflite").read_bytes()
    assert metrics["flash_bytes"] == len(data)
    cc = (folder / "model_data.cc").read_text()
    assert "alignas(16) const unsigned char model_data[]" in cc and f"model_data_len = {len(data)};" in cc
    settings = (folder / "model_settings.h").read_text()
    assert f"kTensorArenaSize = {metrics['arena_bytes']};" in settings
    assert 'kCategoryLabels[kNumClasses] = {"blue", "green", "red"};' in settings
    resolver = (folder / "op_resolver.h").read_text()
    assert f"MicroMutableOpResolver<{len(metrics['ops'])}>" in resolver
    assert resolver.count("TF_LITE_ENSURE_STATUS(resolver.Add") == len(metrics["ops"])
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= set(metrics["ops"])
    assert metrics["device"] == {
        "profile": "cortex-m4-nrf52840", "flash_budget": 1048576, "ram_budget": 262144,
        "flash_ok": True, "ram_ok": metrics["arena_bytes"] <= 262144,
    }  # fmt: skip
    assert json.loads((folder / "firmware.json").read_text())["arena_bytes"] == metrics["arena_bytes"]


def test_arena_is_minimal_and_sufficient(firmware_run):
    from edgecls.firmware import fits

    run, entry = firmware_run
    data = run.file("export/finetune/model_int8.tflite").read_bytes()
    measured = entry["metrics"]["arena_bytes_measured"]
    assert fits(data, measured)
    assert not fits(data, int(measured * 0.95))
    assert not fits(data, measured - 16)
    assert entry["metrics"]["arena_bytes"] == -(-int(measured * 1.1) // 16) * 16


def test_tflm_matches_litert(firmware_run):
    run, entry = firmware_run
    parity = entry["metrics"]["parity"]
    assert parity["images"] == 18
    assert parity["top1_agreement"] == 1.0
    assert parity["max_abs_diff_quantized"] <= 1  # reference kernels on both sides: at most 1 LSB
    assert parity["tflm_accuracy"] == parity["litert_accuracy"]


def test_bad_inputs(firmware_run, tmp_path, capsys):
    run, _ = firmware_run
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    float_model = copy / "export/finetune/model_fp32.tflite"
    cases = [
        (["--model", float_model], "has float32 input and float32 output; TFLM firmware needs the full-integer"),
        (["--device", "esp32"], "the device profile must be one of cortex-m4-nrf52840, cortex-m4-stm32f446"),
        (["--stage", "qat"], "has no int8 TFLite model"),
        (["--namespace", "1bad"], "`--namespace` must be an ASCII C++ identifier"),
        ([], "already has firmware assets for `finetune`; pass `--force`"),
    ]
    for args, message in cases:
        code, out, err = run_cli(["firmware", copy, *args], capsys)
        assert code == 2, err
        assert message in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "bare").mkdir()
    code, out, err = run_cli(["firmware", tmp_path / "bare"], capsys)
    assert code == 2 and "has no finished `finetune` stage" in err


def test_unsupported_ops_and_unallocatable_models():
    import tensorflow as tf
    import tf_keras

    from edgecls.errors import ConfigError, StageError
    from edgecls.firmware import check_int8, measure_arena

    inputs = tf_keras.Input((8,))
    model = tf_keras.Model(inputs, tf_keras.layers.Lambda(lambda x: tf.math.exp(x) * 2.0)(inputs))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([np.random.rand(1, 8).astype(np.float32)] for _ in range(8))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    flatbuffer = converter.convert()
    with pytest.raises(ConfigError, match="uses ops edgecls cannot register in TFLM: EXP"):
        check_int8(flatbuffer, "exp.tflite")
    with pytest.raises(StageError, match="does not allocate in TFLM even with a 0 MiB arena"):
        measure_arena(flatbuffer, upper=64)
