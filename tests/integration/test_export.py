"""`edgecls export` and `edgecls calibrate`: parity, int8 end to end, metadata, bad inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import finetune_tiny, make_image_folder, run_cli
from edgecls.run import RunDir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny fine-tuned run, exported to fp32, fp16, dynamic and int8 TFLite and fp32/int8 ONNX."""
    from edgecls.config import ExportConfig
    from edgecls.export import run_export

    run = finetune_tiny(tmp_path_factory.mktemp("export"), train=16)
    export = ExportConfig(precisions=("fp32", "fp16", "dynamic", "int8"), calibration_samples=12, check_per_class=6)
    return RunDir(run), run_export(run, export)


def rows_by_file(entry):
    return {row["file"]: row for row in entry["metrics"]["artifacts"]}


def test_fp32_files_match_keras(exported):
    run, entry = exported
    rows = rows_by_file(entry)
    assert set(rows) == {
        "model_fp32.tflite", "model_fp16.tflite", "model_dynamic.tflite", "model_int8.tflite",
        "model_fp32.onnx", "model_int8.onnx",
    }  # fmt: skip
    for name in ("model_fp32.tflite", "model_fp32.onnx"):
        assert rows[name]["check_max_abs_error"] < 1e-4, name
        assert rows[name]["check_agreement"] == 1.0
    assert rows["model_fp16.tflite"]["check_max_abs_error"] < 1e-2
    assert entry["metrics"]["check_images"] == 18


def test_int8_files_are_int8_end_to_end(exported):
    run, entry = exported
    rows = rows_by_file(entry)
    tflite = rows["model_int8.tflite"]
    assert (tflite["input_dtype"], tflite["output_dtype"]) == ("int8", "int8")
    assert tflite["weight_dtypes"] == ["int8"]
    # int8 weights are a quarter of fp32; int32 biases and per-channel scales add the rest. Measured: 0.355 for this
    # run's last epoch, 0.346 for an earlier one (the converter shares the buffers of still-identical BatchNorm
    # parameters), 0.405 for the channel-pruned default model (docs/benchmarks.md)
    assert rows["model_int8.tflite"]["bytes"] <= 0.42 * rows["model_fp32.tflite"]["bytes"]
    onnx_row = rows["model_int8.onnx"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(onnx_row["ops"])
    assert onnx_row["int8_initializers"] >= 14 and onnx_row["opset"] >= 13
    assert rows["model_fp32.onnx"]["int8_initializers"] == 0


def test_metadata_round_trips(exported):
    from edgecls.export import onnx as onnx_export
    from edgecls.export import tflite

    run, entry = exported
    folder = run.file("export/finetune")
    for name in ("model_fp32.tflite", "model_int8.tflite"):
        meta = tflite.read_metadata((folder / name).read_bytes())
        assert meta["labels"] == ["blue", "green", "red"] and meta["input_size"] == 32
        assert meta["normalization"]["formula"] == "x / 127.5 - 1"
    meta = onnx_export.read_metadata(folder / "model_int8.onnx")
    assert json.loads(meta["labels"]) == ["blue", "green", "red"] and meta["precision"] == "int8"
    assert (folder / "labels.txt").read_text().split() == ["blue", "green", "red"]
    recorded = json.loads((folder / "export.json").read_text())
    assert recorded["calibration"]["samples"] == 12
    assert (
        run.require_stage("export/finetune")["outputs"]["export/finetune/model_int8.tflite"]["sha256"]
        == (rows_by_file(entry)["model_int8.tflite"]["sha256"])
    )


def test_calibration_rebuilds_bit_identically(tmp_path, capsys):
    from edgecls.calibration import load_calibration, read_manifest

    images = make_image_folder(tmp_path / "images", train=8, test=2)
    paths = []
    for name in ("a.json", "b.json"):
        args = ["calibrate", "--data", images, "--samples", "9", "--seed", "3", "--input-size", "32"]
        code, out, err = run_cli([*args, "--output", tmp_path / name], capsys)
        assert code == 0, err
        paths.append(tmp_path / name)
    first, second = (json.loads(p.read_text()) for p in paths)
    assert first == second
    assert first["per_class"] == {"blue": 3, "green": 3, "red": 3}
    assert all(entry["id"].startswith("train/") for entry in first["images"])
    pixels = load_calibration(read_manifest(paths[0]), input_size=32)
    assert pixels.shape == (9, 32, 32, 3) and pixels.dtype == np.uint8


def test_bad_calibration_manifests(exported, tmp_path, capsys):
    run, _ = exported
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    manifest = json.loads((copy / "export/finetune/calibration.json").read_text())
    tampered = dict(manifest, images=[dict(manifest["images"][0], sha256="0" * 64), *manifest["images"][1:]])
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    (tmp_path / "size.json").write_text(json.dumps(dict(manifest, input_size=64)))
    cases = [
        (["--calibration", tmp_path / "tampered.json"], "no longer matches its sha256"),
        (["--calibration", tmp_path / "size.json"], "holds 64 px images; the model takes 32 px"),
        (["--calibration", tmp_path / "missing.json"], "must be an existing calibration manifest"),
        (["--format", "onnx", "--precision", "fp16"], "fp32 or int8 for ONNX"),
        (["--precision", "int4"], "`--precision` must be a non-empty subset"),
        (["--stage", "qat"], "has no finished `qat` stage"),
        (["--granularity", "per-row"], "`--granularity` must be one of auto, per-channel, per-tensor"),
    ]
    for args, message in cases:
        code, out, err = run_cli(["export", copy, "--int8", "--force", *args], capsys)
        assert code == 2, err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert sorted(p.name for p in (copy / "export").iterdir()) == ["finetune"], "no partial export folder"
        assert (copy / "export/finetune/export.json").exists()
    code, out, err = run_cli(["export", copy, "--int8"], capsys)
    assert code == 2 and "already exported `finetune`; pass `--force`" in err
    (tmp_path / "empty").mkdir()
    code, out, err = run_cli(["export", tmp_path / "empty", "--int8"], capsys)
    assert code == 2 and "has no finished `finetune` stage" in err


def test_converter_failure_names_the_op():
    import tensorflow as tf
    import tf_keras

    from edgecls.errors import ConversionError
    from edgecls.export import tflite

    inputs = tf_keras.Input((4,))
    model = tf_keras.Model(inputs, tf_keras.layers.Lambda(lambda x: tf.math.erfinv(x))(inputs))
    with pytest.raises(ConversionError, match=r"^TFLite converter failed on op tf\.Erfinv\.$"):
        tflite.convert(model, "fp32")


@pytest.mark.shared
def test_real_images_parity_and_qat_int8(tmp_path, shared_cifar, keras_home):
    """ImageNet MobileNet on real CIFAR-10 images: fp32 parity, and a QAT model's int8 export without calibration."""
    from edgecls.config import ExportConfig, OptimizeConfig, load_config
    from edgecls.export import run_export
    from edgecls.optimize import run_optimize
    from edgecls.train import run_finetune

    cfg = load_config(
        overrides={
            "data.source": str(shared_cifar),
            "data.limit_per_class": 30,
            "data.test_limit_per_class": 20,
            "train.strategy": "frozen",
            "train.epochs": 1,
            "run.runs_dir": str(tmp_path),
            "run.name": "real",
        }
    )
    run_finetune(cfg)
    rows = rows_by_file(run_export(tmp_path / "real", ExportConfig(check_per_class=20, calibration_samples=50)))
    for name in ("model_fp32.tflite", "model_fp32.onnx"):
        assert rows[name]["check_max_abs_error"] < 1e-4, name
    int8 = rows["model_int8.tflite"]
    assert int8["check_accuracy"] >= int8["keras_check_accuracy"] - 0.15  # a 1-epoch head: near-tied scores
    run_optimize(tmp_path / "real", OptimizeConfig(qat=True, epochs=1, limit_per_class=10))
    entry = run_export(tmp_path / "real", ExportConfig(stage="qat", check_per_class=20))
    rows = rows_by_file(entry)
    assert entry["metrics"]["calibration"] is None, "QAT int8 needs no calibration set"
    assert rows["model_int8.tflite"]["source_stage"] == "qat" and rows["model_fp32.tflite"]["source_stage"] == "finetune"
    assert (rows["model_int8.tflite"]["input_dtype"], rows["model_int8.tflite"]["weight_dtypes"]) == ("int8", ["int8"])
    for name in ("model_int8.tflite", "model_int8.onnx"):
        assert rows[name]["check_accuracy"] >= rows[name]["keras_check_accuracy"] - 0.15, name


@pytest.mark.shared
@pytest.mark.parametrize("samples", [100, 500])
def test_shipped_cifar_manifests_rebuild(shared_cifar, samples):
    """The manifests in calibration/ select training images only and rebuild bit-identically."""
    from conftest import ROOT
    from edgecls.calibration import load_calibration, read_manifest

    manifest = read_manifest(ROOT / "calibration" / f"cifar10-jpeg_{samples}_128px_seed0.json")
    assert manifest["samples"] == samples and set(manifest["per_class"].values()) == {samples // 10}
    assert all(entry["id"].startswith("train/") for entry in manifest["images"])
    pixels = load_calibration(manifest, source=str(shared_cifar), input_size=128)
    assert pixels.shape == (samples, 128, 128, 3)


def test_per_tensor_and_stripped_strings(exported, tmp_path):
    """A float model's int8 files with one scale per weight tensor, names stripped: smaller, still labelled."""
    from ai_edge_litert.interpreter import Interpreter

    from edgecls.config import ExportConfig
    from edgecls.export import run_export, tflite

    run, per_channel = exported
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    cfg = ExportConfig(granularity="per-tensor", strip_strings=True, calibration_samples=12, check_per_class=6, stage="finetune")
    entry = run_export(copy, cfg, force=True)
    rows, before = rows_by_file(entry), rows_by_file(per_channel)
    assert entry["metrics"]["granularity"] == "per-tensor" and entry["metrics"]["strip_strings"] is True
    assert before["model_int8.tflite"]["weight_granularity"] == "per-channel"
    assert before["model_int8.onnx"]["weight_granularity"] == "per-channel+per-tensor"  # ORT: MatMul weights per tensor
    assert rows["model_int8.tflite"]["weight_granularity"] == rows["model_int8.onnx"]["weight_granularity"] == "per-tensor"
    assert rows["model_int8.tflite"]["weight_dtypes"] == ["int8"]
    assert rows["model_fp32.tflite"]["check_max_abs_error"] < 1e-4
    for name in ("model_fp32.tflite", "model_int8.tflite"):
        assert rows[name]["bytes"] < before[name]["bytes"], name
        flatbuffer = (copy / "export/finetune" / name).read_bytes()
        assert tflite.read_metadata(flatbuffer)["labels"] == ["blue", "green", "red"]
        assert {t["name"] for t in Interpreter(model_content=flatbuffer).get_tensor_details()} == {""}
    assert rows["model_int8.onnx"]["bytes"] < before["model_int8.onnx"]["bytes"]
