"""The run folder and its manifest: the one hand-off between stages.

A run folder `runs/<name>/` holds `config.yaml`, the artifacts of each stage and
`manifest.json`. A stage appears in the manifest only after all its files are
written, so a folder without its stage entry is never mistaken for a finished
one. Every file is written atomically (temp file, then rename).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgecls import __version__
from edgecls.errors import RunError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
CONFIG = "config.yaml"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Text version of `atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def staged_folder(final: Path):
    """Yield an empty temporary sibling of `final`; on success it replaces `final`, on error it is removed.

    A stage that writes several files this way never leaves a partial folder behind.
    """
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        tmp.replace(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def quiet_native_stderr(enabled: bool = True):
    """Silence what C++ libraries print on file descriptor 2 (TensorFlow start-up, TFLM allocation failures)."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def check_writable(folder: str | Path) -> None:
    """Fail early, before any work, if `folder` (or its nearest existing parent) cannot be written.

    A real probe file is created and removed, so read-only file systems and
    permissions are caught even for root.

    Raises:
        RunError: the folder cannot be created or written.
    """
    probe = Path(folder).absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise RunError(f"cannot write to {folder}: {probe} is a file, not a folder.")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise RunError(
            f"cannot write to {probe} ({exc.strerror or exc}): choose another `--runs-dir` or fix its permissions."
        ) from None


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def tool_versions() -> dict[str, str]:
    """Versions of the tools that shape a run's numbers (imports TensorFlow)."""
    import numpy
    import tensorflow as tf
    import tf_keras

    return {
        "edgecls": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
        "numpy": numpy.__version__,
    }


class RunDir:
    """A run folder and its manifest.

    Args:
        path: The folder, e.g. `runs/mobilenet-full`.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def file(self, name: str) -> Path:
        """Path of an artifact inside the run folder."""
        return self.path / name

    def manifest(self) -> dict[str, Any]:
        """The manifest, or an empty skeleton if no stage has finished yet."""
        if not self.manifest_path.exists():
            return {"schema_version": SCHEMA_VERSION, "stages": {}}
        try:
            return json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise RunError(f"{self.manifest_path} is not valid JSON ({exc.msg}).") from None

    def stage(self, name: str) -> dict[str, Any] | None:
        """The manifest entry of a finished stage, or None."""
        return self.manifest().get("stages", {}).get(name)

    def require_stage(self, name: str) -> dict[str, Any]:
        """The manifest entry of a finished stage.

        Raises:
            RunError: the folder does not exist or the stage has not finished in it.
        """
        if not self.path.is_dir():
            raise RunError(f"run folder {self.path} does not exist.")
        entry = self.stage(name)
        if entry is None:
            raise RunError(f"run {self.path} has no finished `{name}` stage; run `edgecls {name}` first (or `--resume` it).")
        return entry

    def check_target(self, *, force: bool, resume: bool, stage: str) -> None:
        """Check, without writing anything, that `stage` may run into this folder.

        Args:
            force: An existing folder will be deleted and started again.
            resume: An existing, unfinished folder will be continued.
            stage: The stage about to run.

        Raises:
            RunError: the folder exists and neither flag allows reuse, a resume
                target is missing or already finished, or the folder is read-only.
        """
        if force and resume:
            raise RunError("pass `--force` or `--resume`, not both.")
        check_writable(self.path)
        exists = self.path.exists() and any(self.path.iterdir())
        if resume:
            if not exists:
                raise RunError(f"nothing to resume: {self.path} does not exist.")
            if self.stage(stage) is not None:
                raise RunError(f"run {self.path} already finished `{stage}`; nothing to resume.")
        elif exists and not force:
            raise RunError(
                f"run folder {self.path} already exists: pass `--force` to overwrite it, "
                "`--resume` to continue it, or `--name` for a new one."
            )

    def create(self, *, force: bool) -> None:
        """Create the folder (emptying it first with `force`). Call `check_target` before."""
        if force and self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)

    def record_stage(
        self,
        name: str,
        *,
        seed: int,
        inputs: dict[str, Any],
        outputs: list[str],
        metrics: dict[str, Any],
        warnings: list[str],
    ) -> dict[str, Any]:
        """Add a finished stage to the manifest (atomically) and return its entry.

        Args:
            name: Stage name, e.g. `finetune`.
            seed: The run's seed.
            inputs: What the stage read (paths with sha256 where they are files).
            outputs: Artifact paths relative to the run folder; each gets bytes and sha256.
            metrics: The stage's headline numbers.
            warnings: Anything the user should know about the numbers.
        """
        manifest = self.manifest()
        manifest.update(
            schema_version=SCHEMA_VERSION,
            tools=tool_versions(),
            git_sha=_git_sha(),
            seed=seed,
        )
        entry = {
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "inputs": inputs,
            "outputs": {rel: {"bytes": self.file(rel).stat().st_size, "sha256": sha256_file(self.file(rel))} for rel in outputs},
            "metrics": metrics,
            "warnings": warnings,
        }
        manifest.setdefault("stages", {})[name] = entry
        atomic_write_json(self.manifest_path, manifest)
        return entry
