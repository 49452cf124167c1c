"""The run folder: atomic writes, refusing to clobber, manifest with sha256."""

from __future__ import annotations

import hashlib
import os

import pytest

from edgecls.errors import RunError
from edgecls.run import RunDir, atomic_write_text, check_writable


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "one")
    atomic_write_text(tmp_path / "a.txt", "two")
    assert (tmp_path / "a.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_existing_folder_needs_force_or_resume(tmp_path):
    run = RunDir(tmp_path / "r")
    run.check_target(force=False, resume=False, stage="finetune")
    run.create(force=False)
    (run.path / "config.yaml").write_text("x")
    with pytest.raises(RunError, match="already exists: pass `--force`"):
        run.check_target(force=False, resume=False, stage="finetune")
    run.check_target(force=True, resume=False, stage="finetune")
    run.check_target(force=False, resume=True, stage="finetune")
    with pytest.raises(RunError, match="not both"):
        run.check_target(force=True, resume=True, stage="finetune")
    with pytest.raises(RunError, match="nothing to resume"):
        RunDir(tmp_path / "other").check_target(force=False, resume=True, stage="finetune")


def test_record_stage_hashes_outputs(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "model.keras").write_bytes(b"weights")
    entry = run.record_stage("finetune", seed=1, inputs={}, outputs=["model.keras"], metrics={"a": 1}, warnings=[])
    assert entry["outputs"]["model.keras"]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    manifest = run.manifest()
    assert manifest["seed"] == 1 and manifest["tools"]["tensorflow"].startswith("2.")
    assert run.require_stage("finetune")["metrics"] == {"a": 1}
    with pytest.raises(RunError, match="no finished `optimize` stage"):
        run.require_stage("optimize")


def test_unwritable_folder_is_caught(tmp_path):
    with pytest.raises(RunError, match="cannot write to"):
        check_writable("/proc/edgecls-runs")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunError, match="is a file"):
        check_writable(blocker / "runs")
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(RunError, match="cannot write to"):
            check_writable(locked / "runs")
