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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecls import __version__
from edgecls.errors import IntegrityError, RunError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
CONFIG = "config.yaml"
MARKER = ".edgecls-run"  # written first into every run folder edgecls creates: `--force` deletes only these


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise RunError(f"cannot write {path}: {exc.strerror or exc}.") from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise RunError(f"cannot write {path}: {exc.strerror or exc}.") from None
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
    if final.is_symlink():
        raise IntegrityError(f"{final} is a symbolic link; edgecls replaces only folders it wrote itself.")
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


def check_writable(folder: str | Path, fix: str = "choose another `--runs-dir` or fix its permissions") -> None:
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
        raise RunError(f"cannot write to {folder}: {probe} is a file, not a folder; {fix}.")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise RunError(f"cannot write to {probe} ({exc.strerror or exc}): {fix}.") from None


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


TOOL_DISTRIBUTIONS = (
    "tensorflow", "tf-keras", "tensorflow-model-optimization", "numpy", "onnx", "onnxruntime", "tf2onnx",
    "ai-edge-litert", "tflite-micro",
)  # fmt: skip


def tool_versions() -> dict[str, str]:
    """Versions of everything that shapes a stage's numbers, from the installed packages' metadata (no imports)."""
    from importlib import metadata

    versions = {"edgecls": __version__, "python": platform.python_version()}
    for name in TOOL_DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


STAGE_COMMANDS = {
    "finetune": "finetune", "prune": "optimize", "qat": "optimize", "pqat": "optimize", "channels": "optimize", "cqat": "optimize",
}  # fmt: skip


@dataclass(frozen=True)
class FinetuneRecord:
    """What the finetune stage recorded that every later stage needs, read and checked once.

    Attributes:
        class_names: Index = label.
        input_size: Square input side in pixels.
        preprocessing: `tf` or `caffe` (see `edgecls.data.pipeline.preprocess`).
        backbone: Registry name of the model.
        alpha: Width multiplier.
        seed: The run's seed (splits and limits are derived from it).
        data_config: The run's `data` config section, as saved.
        macs: Multiply-accumulates of one inference, as finetune measured them (None if not recorded).
    """

    class_names: tuple[str, ...]
    input_size: int
    preprocessing: str
    backbone: str
    alpha: float
    seed: int
    data_config: dict[str, Any]
    macs: int | None = None

    @classmethod
    def from_entry(cls, entry: dict[str, Any], where: Path) -> FinetuneRecord:
        """Parse a finetune manifest entry; `RunError` naming the run when it is not shaped as edgecls writes it."""
        try:
            inputs, model = entry["inputs"], entry["inputs"]["model"]
            record = cls(
                class_names=tuple(inputs["class_names"]),
                input_size=int(model["input_size"]),
                preprocessing=model["preprocessing"],
                backbone=model["name"],
                alpha=float(model["alpha"]),
                seed=int(inputs["seed"]),
                data_config=dict(inputs["data_config"]),
                macs=(entry.get("metrics") or {}).get("macs"),
            )
        except (KeyError, TypeError, ValueError):
            record = None
        if (
            record is None
            or record.preprocessing not in ("tf", "caffe")
            or len(record.class_names) < 2
            or not all(isinstance(name, str) for name in record.class_names)
            or not 1 <= record.input_size <= 4096
            or not (record.macs is None or (isinstance(record.macs, int) and record.macs > 0))
        ):
            raise RunError(f"the finetune entry of {where / MANIFEST} is not shaped as edgecls writes it.")
        return record

    def data(self, **overrides: Any):
        """The run's `DataConfig`, with `overrides` (e.g. `test_limit_per_class`)."""
        from edgecls.config import config_from_dict

        return config_from_dict({"data": {**self.data_config, **overrides}}).data


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

    def inside(self, relative: str) -> Path:
        """The path of `relative` (as a manifest lists it), confined to the run folder.

        Raises:
            IntegrityError: an absolute path, or one that leads outside the folder (`..`, a link).
        """
        root = self.path.resolve()
        target = (root / relative).resolve()
        if Path(relative).is_absolute() or not target.is_relative_to(root) or (root / relative).is_symlink():
            raise IntegrityError(f"run {self.path} names {relative!r}, a path outside the run folder or a link; refusing it.")
        return target

    def manifest(self) -> dict[str, Any]:
        """The manifest, or an empty skeleton if no stage has finished yet.

        Raises:
            RunError: the file is unreadable, not JSON, or not shaped like an edgecls manifest.
        """
        if not self.manifest_path.exists():
            return {"schema_version": SCHEMA_VERSION, "stages": {}}
        try:
            manifest = json.loads(self.manifest_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise RunError(f"{self.manifest_path} is not readable JSON ({getattr(exc, 'msg', exc)}).") from None
        stages = manifest.get("stages") if isinstance(manifest, dict) else None
        if not isinstance(stages, dict) or not all(isinstance(e, dict) for e in stages.values()):
            raise RunError(f"{self.manifest_path} is not an edgecls manifest (expected an object with `stages`).")
        return manifest

    def output_sha256(self, stage: str, relative: str) -> str | None:
        """The sha256 the manifest recorded for an output file of `stage`, or None."""
        record = (self.stage(stage) or {}).get("outputs", {})
        return (record.get(relative) or {}).get("sha256") if isinstance(record, dict) else None

    def is_run_folder(self) -> bool:
        """True for a folder edgecls created (its marker, or a manifest from before the marker)."""
        return (self.path / MARKER).is_file() or self.manifest_path.is_file()

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
            command = STAGE_COMMANDS.get(name, name.split("/")[0])
            raise RunError(f"run {self.path} has no finished `{name}` stage; run `edgecls {command}` first.")
        return entry

    def model_sha256(self, stage: str) -> str | None:
        """The sha256 the manifest recorded for the Keras model a stage saved (a later stage's `inputs` cite it)."""
        return self.output_sha256(stage, "model.keras" if stage == "finetune" else f"{stage}/model.h5")

    def finetune_record(self) -> FinetuneRecord:
        """The checked `FinetuneRecord` of a finished run (`RunError` when missing or malformed)."""
        return FinetuneRecord.from_entry(self.require_stage("finetune"), self.path)

    def load_model(self, stage: str = "finetune", *, trust: bool = False):
        """The Keras model a finished stage saved, verified against the manifest before loading.

        Args:
            stage: `finetune`, `prune`, `qat` or `pqat`.
            trust: Allow Lambda layers and foreign modules (`--trust-run`); hashes are checked anyway.

        Returns:
            (model, entry): the uncompiled model and the stage's manifest entry.

        Raises:
            RunError, IntegrityError: see `edgecls.modelfile.load_keras_model`.
        """
        from edgecls.modelfile import load_keras_model

        entry = self.require_stage(stage)
        relative = "model.keras" if stage == "finetune" else f"{stage}/model.h5"
        path = self.inside(relative)
        return load_keras_model(path, sha256=self.output_sha256(stage, relative), trust=trust), entry

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
        if exists and force and (self.path.is_symlink() or not self.is_run_folder()):
            raise RunError(
                f"{self.path} is not an edgecls run folder (no {MARKER} marker): `--force` deletes only runs "
                "edgecls created; choose another `--name` or remove it yourself."
            )

    def create(self, *, force: bool) -> None:
        """Create the folder with its marker (emptying an edgecls run first with `force`). Call `check_target` before."""
        if force and self.path.exists() and self.is_run_folder() and not self.path.is_symlink():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / MARKER).write_text("This folder was created by edgecls; `--force` may replace it.\n")

    def record_pipeline(self, stage: str, config_sha256: str, entries: dict[str, str]) -> None:
        """Note in the manifest that `edgecls run` finished `stage` with this config, and which entries it wrote.

        Args:
            stage: A pipeline stage (`finetune`, `optimize`, ...).
            config_sha256: Digest of the config sections the stage depends on.
            entries: Manifest entry name -> its `finished` time, to notice a stage re-run by hand.
        """
        manifest = self.manifest()
        pipeline = manifest.get("pipeline") if isinstance(manifest.get("pipeline"), dict) else {}
        pipeline[stage] = {"config_sha256": config_sha256, "entries": entries}
        manifest["pipeline"] = pipeline
        atomic_write_json(self.manifest_path, manifest)

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
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds"),
            "tools": manifest["tools"],
            "inputs": inputs,
            "outputs": {rel: {"bytes": self.file(rel).stat().st_size, "sha256": sha256_file(self.file(rel))} for rel in outputs},
            "metrics": metrics,
            "warnings": warnings,
        }
        manifest.setdefault("stages", {})[name] = entry
        atomic_write_json(self.manifest_path, manifest)
        return entry
