"""`edgecls validate`: the parity table, the gate's exit status, and corrupt files as failing rows."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import run_cli
from edgecls.validate import Gate

pytestmark = pytest.mark.slow


def test_gate_rules():
    gate = Gate()
    assert gate.judge("fp32", 1.0, -3.0) is None
    assert gate.judge("fp32", 0.998, 0.0) == "agreement 0.9980 < 0.999"
    assert gate.judge("fp16", 0.996, 0.0) is None
    assert gate.judge("int8", 0.5, -0.9) is None
    assert gate.judge("int8", 0.99, -1.2) == "accuracy -1.20 pp vs Keras, allowed -1.0"
    assert Gate(int8_max_drop_pp=2.0).judge("dynamic", 0.9, -1.5) is None
    assert gate.judge_micro(1.0) is None and gate.judge_micro(0.99) is None
    assert gate.judge_micro(0.985) == "agreement with LiteRT's reference kernels 0.9850 < 0.99"


def test_tflite_micro_computes_what_litert_reference_kernels_do(tiny_exported_run, tmp_path, capsys):
    """The TFLite Micro row's yardstick: on the same int8 file and images, LiteRT's reference kernels (run by the
    worker in a child process) give TFLite Micro's scores bit for bit; a non-.tflite file is a worker error."""
    import numpy as np

    from edgecls import worker
    from edgecls.data import load_split
    from edgecls.preprocessing import normalize_numpy
    from edgecls.run import RunDir
    from edgecls.runtimes import WorkerError, isolated_scores, tflm_scores_isolated

    record = RunDir(tiny_exported_run).finetune_record()
    test, _ = load_split(record.data(), record.input_size, record.seed, "test")
    int8 = tiny_exported_run / "export" / "finetune" / "model_int8.tflite"
    reference = isolated_scores(int8, test.images, mode=record.preprocessing, reference_kernels=True)
    micro = tflm_scores_isolated(int8, normalize_numpy(test.images, record.preprocessing))
    assert reference.shape == micro.shape == (len(test.images), len(record.class_names))
    np.testing.assert_array_equal(reference, micro)
    np.save(tmp_path / "images.npy", test.images[:2])  # the flag reaches LiteRT's reference op resolver
    assert worker.main(["scores", str(int8), str(tmp_path / "images.npy"), str(tmp_path / "out.npy"), "--reference-kernels"]) == 0
    assert json.loads(capsys.readouterr().out)["runtime"] == "ai-edge-litert (reference kernels)"
    with pytest.raises(WorkerError, match="--reference-kernels is for .tflite files"):
        isolated_scores(int8.with_suffix(".onnx"), test.images[:2], mode=record.preprocessing, reference_kernels=True)


def test_parity_table(tiny_exported_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_exported_run, run)
    code, out, err = run_cli(["validate", run, "--max-int8-drop", "100", "--tflm-images", "9"], capsys)
    assert code == 0, err
    result = json.loads((run / "validate.json").read_text())
    rows = {(r["artifact"], r["runtime"]): r for r in result["rows"]}
    assert set(rows) == {
        ("model_fp32.tflite", "litert"), ("model_int8.tflite", "litert"), ("model_int8.tflite", "tflite-micro"),
        ("model_fp32.onnx", "onnxruntime"), ("model_int8.onnx", "onnxruntime"),
    }  # fmt: skip
    for key in (("model_fp32.tflite", "litert"), ("model_fp32.onnx", "onnxruntime")):
        assert rows[key]["agreement"] == 1.0 and rows[key]["max_abs_error"] < 1e-4
        assert rows[key]["delta_pp"] == 0.0 and rows[key]["status"] == "pass"
        assert rows[key]["images"] == 18
    micro = rows[("model_int8.tflite", "tflite-micro")]
    assert micro["images"] == 9 and micro["litert_agreement"] >= 0.99 and micro["status"] == "pass"  # the same file
    assert "(agrees with LiteRT's reference kernels on " in (run / "validate.md").read_text()
    int8 = rows[("model_int8.tflite", "litert")]
    assert int8["accuracy"] == pytest.approx(int8["keras_accuracy"] + int8["delta_pp"] / 100)
    assert 0 < int8["mean_abs_error"] <= int8["max_abs_error"] <= 1
    assert "| model_fp32.onnx | finetune | onnxruntime | fp32 |" in (run / "validate.md").read_text()
    assert "model_int8.onnx" in out


def rerecord(run, stage: str, name: str) -> None:
    """Record an exported file's current sha256, as an exporter that wrote it that way would have."""
    from edgecls.run import sha256_file

    manifest = json.loads((run / "manifest.json").read_text())
    for artifact in manifest["stages"][f"export/{stage}"]["metrics"]["artifacts"]:
        if artifact["file"] == name:
            artifact["sha256"] = sha256_file(run / "export" / stage / name)
    (run / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("name", "damage", "reason"),
    [
        ("model_int8.tflite", lambda b: b[: len(b) // 2], "LiteRT cannot load"),
        ("model_fp32.tflite", lambda b: b[:64], "LiteRT cannot load"),
        ("model_fp32.tflite", lambda b: b"", "missing or empty file"),
        ("model_fp32.tflite", lambda b: bytes(reversed(b)), "not a TFLite flatbuffer"),
        ("model_fp32.onnx", lambda b: b[: len(b) // 3], "not a valid ONNX model"),
        ("model_int8.onnx", lambda b: b"\x08\x07" + b"\xff" * 40, "not a valid ONNX model"),
    ],
)
def test_corrupt_files_fail_their_row(tiny_exported_run, tmp_path, capsys, name, damage, reason):
    """Files that match their export record but are broken (the hash check is test_hostile_runs')."""
    run = tmp_path / "run"
    shutil.copytree(tiny_exported_run, run)
    path = run / "export" / "finetune" / name
    path.write_bytes(damage(path.read_bytes()))
    rerecord(run, "finetune", name)
    code, out, err = run_cli(["validate", run, "--max-int8-drop", "100", "--tflm-images", "0"], capsys)
    assert code == 1, err
    assert "validation failed: 1 of 4 rows" in err
    rows = json.loads((run / "validate.json").read_text())["rows"]
    broken = [r for r in rows if r["status"] == "fail"]
    assert [r["artifact"] for r in broken] == [name]
    assert reason in broken[0]["reason"], broken[0]["reason"]


def test_nothing_to_validate(tmp_path, capsys):
    code, out, err = run_cli(["validate", tmp_path / "none"], capsys)
    assert code == 2 and "does not exist" in err


@pytest.mark.shared
def test_gate_passes_good_and_fails_wrongly_calibrated_int8(tmp_path, shared_cifar, keras_home, capsys):
    import tensorflow as tf

    from edgecls.config import ExportConfig, load_config
    from edgecls.export import run_export
    from edgecls.export import tflite as tflite_export
    from edgecls.optimize import load_stage_model
    from edgecls.run import RunDir
    from edgecls.train import run_finetune

    cfg = load_config(
        overrides={
            "data.source": str(shared_cifar), "data.limit_per_class": 200, "data.test_limit_per_class": 30,
            "train.strategy": "frozen", "train.epochs": 2, "run.runs_dir": str(tmp_path), "run.name": "gate",
        }
    )  # fmt: skip
    run_finetune(cfg)
    run_export(tmp_path / "gate", ExportConfig(formats=("tflite",), calibration_samples=100, check_per_class=10))
    # post-training int8 of a frozen ImageNet backbone costs about 10 points here (measured); a broken one, far more
    args = ["validate", tmp_path / "gate", "--max-int8-drop", "20", "--tflm-images", "0"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, out + err

    model, _ = load_stage_model(RunDir(tmp_path / "gate"), "finetune")
    wrong = np.full((1, 128, 128, 3), 0.01, np.float32)  # calibrated on a flat grey image: ranges far too narrow
    flatbuffer = tflite_export.convert(model, "int8", representative=lambda: iter([[wrong]] * 20))
    (tmp_path / "gate/export/finetune/model_int8.tflite").write_bytes(flatbuffer)
    rerecord(tmp_path / "gate", "finetune", "model_int8.tflite")  # as a real re-export would
    code, out, err = run_cli(args, capsys)
    assert code == 1, out
    row = next(r for r in json.loads((tmp_path / "gate/validate.json").read_text())["rows"] if r["precision"] == "int8")
    assert row["status"] == "fail" and row["delta_pp"] < -20
    del tf


def test_gate_boundary_is_exact():
    """One image of 100 is a 1.0 pp drop; (0.12 - 0.13) * 100 is -1.0000000000000009 in floating point."""
    assert Gate(int8_max_drop_pp=1.0).judge("int8", 0.9, (0.12 - 0.13) * 100) is None
    assert Gate(int8_max_drop_pp=1.0).judge("int8", 0.9, -1.01) is not None
    assert Gate(fp32_min_agreement=0.999).judge("fp32", 999 / 1000, 0.0) is None


def test_resnet50_caffe_preprocessing_end_to_end(tmp_path, capsys):
    """ResNet50 (BGR minus the ImageNet mean) through finetune, export and validate: the runtimes agree with Keras."""
    from conftest import finetune_tiny
    from edgecls.config import ExportConfig
    from edgecls.export import run_export

    run = finetune_tiny(tmp_path, train=4, test=2, **{"model.name": "resnet50", "train.epochs": 1, "train.warmup_epochs": 0})
    entry = run_export(run, ExportConfig(formats=("tflite",), precisions=("fp32",), check_per_class=2))
    (artifact,) = entry["metrics"]["artifacts"]
    assert artifact["check_agreement"] == 1.0
    code, out, err = run_cli(["validate", run, "--tflm-images", "0"], capsys)
    assert code == 0, out + err
    (row,) = json.loads((run / "validate.json").read_text())["rows"]
    assert row["agreement"] == 1.0 and row["max_abs_error"] < 1e-4
