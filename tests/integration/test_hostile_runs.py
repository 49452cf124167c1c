"""A run folder from someone else is untrusted input (issue 15): no code runs, no tampered file is used,
no crash escapes, and every bad input is one `edgecls: error:` line with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_error, run_cli, snapshot

pytestmark = pytest.mark.slow


@pytest.fixture
def run_copy(tiny_exported_run, tmp_path) -> Path:
    """A private, writable copy of the session's tiny exported run."""
    return Path(shutil.copytree(tiny_exported_run, tmp_path / "run"))


def _rewrite_manifest(run: Path, change) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    change(manifest)
    (run / "manifest.json").write_text(json.dumps(manifest))


def _record_hash(run: Path, stage: str, relative: str) -> None:
    """Make the manifest vouch for a planted file, as an attacker who edits both would."""
    from edgecls.run import sha256_file

    def change(manifest):
        entry = manifest["stages"].setdefault(stage, {"inputs": {}, "metrics": {}, "outputs": {}, "warnings": []})
        entry["outputs"][relative] = {"bytes": (run / relative).stat().st_size, "sha256": sha256_file(run / relative)}

    _rewrite_manifest(run, change)


def _lambda_model(marker: Path):
    """A 32 px, 3-class model whose Lambda layer writes `marker` when it is deserialized and called."""
    import tf_keras

    command = f"open({str(marker)!r}, 'w').write('ran')"
    inputs = tf_keras.Input((32, 32, 3))
    x = tf_keras.layers.Lambda(lambda t: (exec(command), t)[1], name="evil")(inputs)  # noqa: S102
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    return tf_keras.Model(inputs, tf_keras.layers.Dense(3, activation="softmax")(x))


def test_hdf5_renamed_to_keras_is_refused_without_running_it(run_copy, tmp_path, capsys):
    marker = tmp_path / "pwned"
    model = _lambda_model(marker)
    marker.unlink(missing_ok=True)  # building the model ran the lambda once; only loading matters
    model.save(str(tmp_path / "evil.h5"))
    shutil.copy(tmp_path / "evil.h5", run_copy / "model.keras")
    code, _, err = run_cli(["evaluate", run_copy], capsys)
    assert_one_error(code, err, 2, "does not match the sha256 in the run's manifest")
    _record_hash(run_copy, "finetune", "model.keras")
    for extra in ([], ["--trust-run"]):  # the format check holds even for a trusted run
        code, _, err = run_cli(["evaluate", run_copy, *extra], capsys)
        assert_one_error(code, err, 2, "is not a .keras (zip) file as its name says")
    assert not marker.exists()


def test_lambda_layers_are_refused_unless_the_run_is_trusted(run_copy, tmp_path, capsys):
    marker = tmp_path / "pwned"
    model = _lambda_model(marker)
    marker.unlink(missing_ok=True)
    model.save(str(run_copy / "model.keras"))
    _record_hash(run_copy, "finetune", "model.keras")
    code, _, err = run_cli(["evaluate", run_copy], capsys)
    assert_one_error(code, err, 2, "contains layer `evil` (Lambda: Python code), which would run code while loading")
    assert not marker.exists()
    code, out, err = run_cli(["evaluate", run_copy, "--trust-run"], capsys)
    assert code == 0, err
    assert marker.exists()  # trusted: the user asked for it


def test_lambda_in_a_stage_h5_is_refused_naming_the_layer(run_copy, tmp_path, capsys):
    marker = tmp_path / "pwned"
    model = _lambda_model(marker)
    marker.unlink(missing_ok=True)
    (run_copy / "prune").mkdir()
    model.save(str(run_copy / "prune" / "model.h5"))
    _record_hash(run_copy, "prune", "prune/model.h5")
    before = snapshot(run_copy)
    code, _, err = run_cli(["export", run_copy, "--stage", "prune", "--format", "tflite"], capsys)
    assert_one_error(code, err, 2, "layer `evil` (Lambda: Python code)")
    assert not marker.exists()
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_model_file_is_one_line(run_copy, capsys, damage):
    path = run_copy / "model.keras"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"PK\x03\x04" + bytes(200))
    _record_hash(run_copy, "finetune", "model.keras")
    code, _, err = run_cli(["evaluate", run_copy], capsys)
    assert_one_error(code, err, 2, "cannot ")


def test_bit_flipped_export_fails_validate_bench_and_firmware(run_copy, capsys):
    path = run_copy / "export" / "finetune" / "model_int8.tflite"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # still loads; only the hash can tell
    path.write_bytes(bytes(data))

    code, out, err = run_cli(["validate", run_copy, "--tflm-images", "0"], capsys)
    assert code == 1, err
    rows = json.loads((run_copy / "validate.json").read_text())["rows"]
    flipped = [r for r in rows if r["artifact"] == "model_int8.tflite"]
    assert flipped and all(r["status"] == "fail" and "sha256 differs" in r["reason"] for r in flipped)
    assert all(r["status"] == "pass" for r in rows if r["artifact"] != "model_int8.tflite")

    args = ["bench", run_copy, "--windows", "1", "--window-seconds", "0", "--runs", "3", "--threads", "1"]
    code, out, err = run_cli(args, capsys)
    assert code == 1, err
    bench = json.loads((run_copy / "bench.json").read_text())
    failed = [r for r in bench["rows"] if r["status"] == "fail"]
    assert [r["artifact"] for r in failed] == ["model_int8.tflite"]
    assert "model_int8.tflite" not in bench["recommendation"]

    code, _, err = run_cli(["firmware", run_copy], capsys)
    assert_one_error(code, err, 2, "sha256 differs from the export record")


def test_corrupted_firmware_models_never_crash_edgecls(run_copy, tmp_path, capsys):
    original = (run_copy / "export" / "finetune" / "model_int8.tflite").read_bytes()
    rng = np.random.default_rng(0)
    for trial in range(4):
        data = bytearray(original)
        for position in rng.integers(8, len(data), 64):
            data[position] = int(rng.integers(0, 256))
        path = tmp_path / f"corrupt{trial}.tflite"
        path.write_bytes(bytes(data))
        code, _, err = run_cli(["firmware", run_copy, "--model", path, "--force", "--parity-images", "6"], capsys)
        assert code in (0, 1, 2), err  # never 139 (a segfault) or a traceback
        if code:
            assert_one_error(code, err, code, "")
            assert "must be" not in err, err  # refused by the model check or the runtime, not by an option
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(original[:100])
    code, _, err = run_cli(["firmware", run_copy, "--model", truncated, "--force"], capsys)
    assert code in (1, 2) and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_paths_in_the_manifest_stay_inside_the_run(run_copy, capsys):
    def escape(manifest):
        manifest["stages"]["export/finetune"]["metrics"]["artifacts"][0]["file"] = "../../../../etc/passwd"

    _rewrite_manifest(run_copy, escape)
    for command in (["validate", run_copy], ["bench", run_copy, "--windows", "1", "--window-seconds", "0", "--runs", "2"]):
        code, _, err = run_cli(command, capsys)
        assert_one_error(code, err, 2, "a path outside the run folder")


def test_full_disk_keeps_the_results_on_screen(run_copy, capsys, monkeypatch):
    import edgecls.validate

    def disk_full(path, obj):
        from edgecls.errors import RunError

        raise RunError(f"cannot write {path}: No space left on device.")

    monkeypatch.setattr(edgecls.validate, "atomic_write_json", disk_full)
    code, out, err = run_cli(["validate", run_copy, "--tflm-images", "0"], capsys)
    assert_one_error(code, err, 2, "validation finished, but its results were not saved")
    assert "model_int8.tflite" in out and "| pass |" in out  # the table was shown, not lost


def test_read_only_run_fails_before_the_work(run_copy, capsys, monkeypatch):
    import tempfile

    def read_only(*_, **__):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    for command in (["validate", run_copy], ["bench", run_copy], ["firmware", run_copy]):
        code, _, err = run_cli(command, capsys)
        assert_one_error(code, err, 2, "Read-only file system")


def _manifest_list(run: Path) -> None:
    (run / "manifest.json").write_text("[]")


def _manifest_truncated(run: Path) -> None:
    text = (run / "manifest.json").read_text()
    (run / "manifest.json").write_text(text[: len(text) // 2])


def _finetune_without_inputs(run: Path) -> None:
    _rewrite_manifest(run, lambda m: m["stages"]["finetune"].pop("inputs"))


def _artifacts_not_a_list(run: Path) -> None:
    _rewrite_manifest(run, lambda m: m["stages"]["export/finetune"]["metrics"].update(artifacts="all"))


def _no_exports(run: Path) -> None:
    _rewrite_manifest(run, lambda m: m["stages"].pop("export/finetune"))


DAMAGE = {
    "manifest is a list": (_manifest_list, "is not an edgecls manifest"),
    "manifest truncated": (_manifest_truncated, "is not readable JSON"),
    "finetune entry without inputs": (_finetune_without_inputs, "is not shaped as edgecls writes it"),
}
COMMANDS = {
    "evaluate": ["evaluate"],
    "optimize": ["optimize", "--qat", "--epochs", "1"],
    "export": ["export", "--force"],
    "firmware": ["firmware", "--force"],
    "validate": ["validate"],
    "bench": ["bench", "--windows", "1", "--window-seconds", "0", "--runs", "2"],
    "report": ["report"],
}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_refuses_a_damaged_run(run_copy, capsys, command, damage):
    change, message = DAMAGE[damage]
    change(run_copy)
    before = snapshot(run_copy)
    args = COMMANDS[command]
    code, _, err = run_cli([args[0], run_copy, *args[1:]], capsys)
    assert_one_error(code, err, 2, message)
    assert snapshot(run_copy) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["evaluate", "{missing}"], "does not exist"),
        (["optimize", "{missing}", "--qat"], "does not exist"),
        (["export", "{missing}"], "does not exist"),
        (["firmware", "{missing}"], "does not exist"),
        (["validate", "{missing}"], "does not exist"),
        (["bench", "{missing}"], "does not exist"),
        (["export", "{run}", "--stage", "prune"], "run `edgecls optimize` first"),
        (["optimize", "{run}", "--config", "{missing}.yaml", "--qat"], "`--config` must be an existing YAML file"),
        (["export", "{run}", "--config", "{run}/model.keras"], "is not a UTF-8 text file"),
        (["export", "{run}", "--force", "--calibration", "{run}/cal.json"], "is not an edgecls calibration manifest"),
        (["firmware", "{run}", "--device", "{run}/board.yaml", "--force"], "needs `ram_bytes`"),
        (["firmware", "{run}", "--model", "{run}/model.keras"], "is not a TFLite flatbuffer"),
        (["firmware", "{run}", "--namespace", "int", "--force"], "`--namespace` must be an ASCII C++ identifier"),
        (["bench", "{run}", "--profile", "{run}/board.yaml"], "needs `ram_bytes`"),
        (["bench", "{run}", "--profile", "no-such-board"], "the device profile must be one of"),
        (["report", "{missing}"], "does not exist"),
        (["evaluate", "{run}", "--data", "{missing}"], "does not exist"),
    ],
)
def test_bad_inputs_to_run_commands(run_copy, tmp_path, capsys, args, message):
    (run_copy / "board.yaml").write_text("name: b\nkind: mcu\nflash_bytes: 100\n")
    (run_copy / "cal.json").write_text(json.dumps({"schema": "edgecls.calibration/1", "source": "x", "input_size": 32}))
    _no_exports(run_copy) if args[0] == "export" and "--force" not in args and "--stage" not in args else None
    before = snapshot(run_copy)
    values = {"run": str(run_copy), "missing": str(tmp_path / "missing")}
    code, _, err = run_cli([a.format(**values) for a in args], capsys)
    assert_one_error(code, err, 2, message)
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("command", [["validate"], ["bench", "--windows", "1", "--runs", "2"], ["firmware", "--force"]])
def test_a_malformed_export_record_is_refused(run_copy, capsys, command):
    _artifacts_not_a_list(run_copy)
    before = snapshot(run_copy)
    code, _, err = run_cli([command[0], run_copy, *command[1:]], capsys)
    assert_one_error(code, err, 2, "the `export/finetune` entry")
    assert snapshot(run_copy) == before


def test_typed_records_check_field_types():
    from edgecls.errors import RunError
    from edgecls.records import ValidationRow, _typed

    row = {"artifact": "m.tflite", "stage": "finetune", "runtime": "litert", "precision": "int8", "bytes": 10,
           "status": "pass", "accuracy": 1, "delta_pp": None}  # fmt: skip
    parsed = _typed(ValidationRow, row, "here")
    assert parsed.accuracy == 1.0 and isinstance(parsed.accuracy, float) and parsed.delta_pp is None
    for bad in ({**row, "bytes": "10"}, {**row, "status": None}, {**row, "bytes": True}, ["not", "a", "dict"]):
        with pytest.raises(RunError, match="here is not shaped as edgecls writes it"):
            _typed(ValidationRow, bad, "here")
