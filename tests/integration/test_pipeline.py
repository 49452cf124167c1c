"""`edgecls run` end to end on a small real subset, the skip logic, `edgecls report`, and a wheel install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_cli

pytestmark = pytest.mark.slow

# The default MCU config, cut to CI size: 20 training and 10 test images a class, 1 epoch each step.
CI_SIZE = [
    "--set", "data.limit_per_class=20", "--set", "data.test_limit_per_class=10", "--set", "data.val_fraction=0.1",
    "--set", "model.input_size=64",
    "--set", "train.epochs=2", "--set", "optimize.epochs=1", "--set", "export.calibration_samples=50",
    "--set", "export.check_per_class=5", "--set", "firmware.parity_images=10", "--set", "validate.tflm_images=10",
    "--set", "bench.runs=5", "--set", "bench.warmup=1", "--set", "bench.threads=1", "--set", "bench.windows=1",
    "--set", "bench.window_seconds=0",
    "--set", "validate.max_int8_drop=25",  # 10 TFLM images (1 image = 10 pp), a model trained 2 epochs at 64 px
    "--set", "validate.min_agreement_tflm=0.8",  # its near-tied scores flip between TFLM's and LiteRT's int8 kernels
]  # fmt: skip


def finished(run: Path) -> dict[str, str]:
    return {key: entry["finished"] for key, entry in json.loads((run / "manifest.json").read_text())["stages"].items()}


@pytest.fixture(scope="module")
def pipeline_run(shared_cifar, keras_home, tmp_path_factory):
    """The CI-sized default pipeline, run once for the module as a user runs it (a process of its own, so the
    console can be read whole): (args, run folder, exit status, stderr)."""
    runs = tmp_path_factory.mktemp("pipeline")
    args = ["run", ROOT / "configs" / "mcu-default.yaml", "--set", f"data.source={shared_cifar}",
            "--set", f"run.runs_dir={runs}", *CI_SIZE]  # fmt: skip
    edgecls = Path(sys.executable).with_name("edgecls")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([str(edgecls), *map(str, args)], capture_output=True, text=True, env=env)
    return args, runs / "mcu-default", done.returncode, done.stderr


def test_every_stage_ran_and_wrote_its_outputs(pipeline_run):
    args, run, code, log = pipeline_run
    assert code == 0, log[-3000:]
    stages = finished(run)
    assert {"finetune", "qat", "export/qat", "firmware/qat", "validate", "bench", "report"} <= set(stages)
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["pipeline"]) == {"finetune", "optimize", "export", "firmware", "validate", "bench", "report"}
    for entry in manifest["stages"].values():  # every stage, validate and bench included, records its tools
        assert {"tensorflow", "tensorflow-model-optimization", "onnxruntime", "tf2onnx", "ai-edge-litert",
                "tflite-micro"} <= set(entry["tools"])  # fmt: skip

    stages_ = manifest["stages"]  # each entry cites the sha256 of what it was made from
    assert stages_["qat"]["inputs"]["parent_sha256"] == stages_["finetune"]["outputs"]["model.keras"]["sha256"]
    assert stages_["export/qat"]["inputs"]["stage_sha256"] == stages_["qat"]["outputs"]["qat/model.h5"]["sha256"]
    int8 = next(a for a in stages_["export/qat"]["metrics"]["artifacts"] if a["file"] == "model_int8.tflite")
    assert stages_["firmware/qat"]["inputs"]["model_sha256"] == int8["sha256"]
    exported = {a["sha256"] for a in stages_["export/qat"]["metrics"]["artifacts"]}
    assert set(stages_["validate"]["inputs"]["artifacts"].values()) == exported

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_test_images"] == 100 and 0.1 < metrics["test_accuracy"] <= 1.0
    export = manifest["stages"]["export/qat"]["metrics"]
    assert sorted(a["file"] for a in export["artifacts"]) == [
        "model_fp32.onnx", "model_fp32.tflite", "model_int8.onnx", "model_int8.tflite",
    ]  # fmt: skip
    firmware = manifest["stages"]["firmware/qat"]["metrics"]
    assert firmware["device"]["profile"] == "cortex-m7-stm32h747" and firmware["device"]["ram_ok"]
    assert 0 < firmware["arena_bytes_measured"] < firmware["arena_bytes"]
    rows = json.loads((run / "validate.json").read_text())["rows"]
    assert len(rows) == 5 and all(r["images"] in (100, 10) for r in rows)  # 4 files + TFLM on 10 images
    bench = json.loads((run / "bench.json").read_text())
    assert {r["artifact"] for r in bench["rows"]} == {a["file"] for a in export["artifacts"]}
    assert all(r["p50_ms"] > 0 for r in bench["rows"])


def test_report_shows_every_stage(pipeline_run):
    from PIL import Image

    _, run, code, _ = pipeline_run
    figures = {"curves.png", "confusion.png", "per_class.png", "tradeoffs.png", "budget.png", "wrong.png"}
    assert {p.name for p in (run / "report").iterdir()} == figures
    for name in figures:
        with Image.open(run / "report" / name) as image:
            assert image.format == "PNG" and image.width >= 400 and np.asarray(image).std() > 5  # drawn, not blank
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(figures)  # self-contained
    for text in ("model_int8.tflite", "tflite-micro", "Most confused class pairs", "Validation gate: passed"):
        assert text in html
    metrics = json.loads((run / "metrics.json").read_text())  # the top confused pair, computed here
    confusion = np.array(metrics["confusion_matrix"])
    np.fill_diagonal(confusion, 0)
    names, top = metrics["class_names"], confusion.max()
    tied = zip(*np.nonzero(confusion == top), strict=True)  # any of equally confused pairs may come first
    assert any(f"<td>{names[t]}</td><td>{names[p]}</td><td>{top}</td>" in html for t, p in tied)
    markdown = (run / "report.md").read_text()
    assert all(f"report/{name}" in markdown for name in figures)
    baseline = metrics["baseline"]["test_accuracy"]
    verdict = "beats" if metrics["test_accuracy"] > baseline else "does NOT beat"
    assert f"It {verdict} a softmax regression on the raw pixels ({baseline:.4f})." in html


def test_second_identical_run_skips_every_stage(pipeline_run, capsys):
    args, run, _, _ = pipeline_run
    before = finished(run)
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert finished(run) == before
    assert err.count(": skip (unchanged)") == 7


def test_changing_validate_reruns_only_validate_bench_and_report(pipeline_run, capsys):
    args, run, _, _ = pipeline_run
    before = finished(run)
    code, out, err = run_cli([*args, "--set", "validate.max_int8_drop=30"], capsys)
    assert code == 0, err
    after = finished(run)
    changed = {key for key in after if after[key] != before.get(key)}
    assert changed == {"validate", "bench", "report"}
    assert json.loads((run / "validate.json").read_text())["gate"]["int8_max_drop_pp"] == 30


def test_a_failed_budget_is_run_again_by_the_same_command(pipeline_run, capsys, tmp_path):
    """A stage whose budget failed is not "unchanged": the next identical `edgecls run` measures again."""
    args, run, _, _ = pipeline_run
    profile = tmp_path / "tiny-device.yaml"
    profile.write_text("name: tiny-device\nkind: linux\nmax_p50_ms: 0.000001\n")  # no file runs in a nanosecond
    failing = [*args, "--set", f"bench.profile={profile}"]
    code, _, err = run_cli(failing, capsys)
    assert code == 1 and "edgecls: run failed: device budget" in err, err
    before = finished(run)
    code, _, err = run_cli(failing, capsys)
    assert code == 1 and "edgecls run: bench: running (it failed last time)" in err, err
    after = finished(run)
    assert {key for key in after if after[key] != before[key]} == {"bench", "report"}


def test_a_failed_gate_still_writes_the_report_then_exits_1(pipeline_run, capsys):
    args, run, _, _ = pipeline_run
    report_before = finished(run)["report"]
    code, out, err = run_cli([*args, "--set", "validate.min_agreement_fp32=1.0", "--set", "validate.max_int8_drop=0"], capsys)
    rows = json.loads((run / "validate.json").read_text())["rows"]
    if all(r["status"] == "pass" for r in rows):
        pytest.skip("every file matched Keras exactly: no gate to fail at this size")
    assert code == 1 and "edgecls: run failed: validation gate failed" in err, err
    assert finished(run)["report"] != report_before
    assert "Validation gate: FAILED" in (run / "report.html").read_text()


def test_the_gate_judges_the_exported_stage_not_an_older_export(pipeline_run, capsys):
    """Files of another stage in the run folder (a post-training export made by hand, or before QAT was added to
    the config) are not what the chain delivers: `edgecls run` gates and benchmarks the stage its export stage wrote."""
    args, run, _, _ = pipeline_run
    code, _, err = run_cli(["export", run, "--stage", "finetune", "--format", "tflite", "--precision", "int8",
                            "--calibration-samples", "20"], capsys)  # fmt: skip
    assert code == 0, err
    assert (run / "export" / "finetune" / "model_int8.tflite").is_file()
    code, _, err = run_cli([*args, "--set", "validate.max_int8_drop=31"], capsys)
    assert code == 0, err
    rows = json.loads((run / "validate.json").read_text())["rows"]
    assert len(rows) == 5 and {r["stage"] for r in rows} == {"qat"}
    assert {r["stage"] for r in json.loads((run / "bench.json").read_text())["rows"]} == {"qat"}
    code, _, err = run_cli(["bench", run, "--stage", "finetune"], capsys)  # the run's MCU profile judges firmware
    assert code == 2 and err.count("edgecls: error:") == 1, err
    assert f"run `edgecls firmware {run} --stage finetune` first" in err
    code, _, err = run_cli(["validate", run, "--tflm-images", "0", "--max-int8-drop", "31"], capsys)
    assert code in (0, 1), err  # by hand, with no stage named, every exported stage is validated
    assert {r["stage"] for r in json.loads((run / "validate.json").read_text())["rows"]} == {"finetune", "qat"}


def test_wheel_install_has_the_firmware_templates(tiny_exported_run, tmp_path):
    """Build the wheel, install it alone into a fresh venv (dependencies borrowed), run `edgecls firmware`."""
    import shutil
    import site

    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)], check=True)
    (wheel,) = wheels.glob("edgecls-*.whl")
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    fresh_site = next(venv.glob("lib/python*/site-packages"))
    # the dependencies, not the editable checkout: a plain path line does not run the .pth files beside it
    (fresh_site / "deps.pth").write_text(site.getsitepackages()[0] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps", "-q",
                    str(wheel)], check=True)  # fmt: skip
    run = Path(shutil.copytree(tiny_exported_run, tmp_path / "run"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import edgecls; print(edgecls.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, env=env, check=True).stdout  # fmt: skip
    assert str(venv) in where, where
    done = subprocess.run([str(venv / "bin" / "edgecls"), "firmware", str(run), "--parity-images", "6"],
                          cwd=tmp_path, capture_output=True, text=True, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    settings = (run / "firmware" / "finetune" / "model_settings.h").read_text()
    assert "kTensorArenaSize" in settings and '"blue", "green", "red"' in settings


def test_the_console_shows_progress_not_library_noise(pipeline_run):
    """The known-harmless warnings (HDF5, quantized-input statistics, tf.lite.Interpreter, XNNPACK) stay hidden."""
    _, _, code, log = pipeline_run
    assert code == 0
    noise = [line for line in log.splitlines() if any(
        word in line for word in ("Warning", "warn(", "deprecated", "INFO:", "WARNING", "legacy"))]  # fmt: skip
    assert noise == [], noise
    assert "edgecls run: report: running" in log
