"""Typed records of what each stage left in the run's manifest: the contract later stages read.

A stage writes its entry with `RunDir.record_stage`; another stage, `bench` or the report reads it
only through a reader here, never by indexing that stage's dicts. Each reader checks the entry's
shape and raises `RunError` naming it when it is not what edgecls writes (a run folder may come
from someone else), and every path it returns is confined to the run folder.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecls.errors import RunError
from edgecls.run import RunDir, sha256_file


def _typed(cls: type, values: Any, where: str, **extra: Any):
    """A `cls` from a manifest dict, every field checked against its type (`X | None` allows None)."""
    hints = typing.get_type_hints(cls)
    kwargs = dict(extra)
    if not isinstance(values, dict):
        raise RunError(f"{where} is not shaped as edgecls writes it.")
    for item in dataclasses.fields(cls):
        if item.name in kwargs:
            continue
        hint, value = hints[item.name], values.get(item.name)
        allowed = typing.get_args(hint) or (hint,)
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            raise RunError(f"{where} is not shaped as edgecls writes it (`{item.name}`).")
        kwargs[item.name] = value
    return cls(**kwargs)


@dataclass(frozen=True)
class ExportedFile:
    """One file an export wrote (a row of its `export.json`), with where it is."""

    stage: str
    file: str
    format: str
    precision: str
    source_stage: str
    bytes: int
    sha256: str
    path: Path
    float_layers: list | None = None

    @property
    def int8_only(self) -> bool:
        """Whether every layer is int8 (False: `--fallback`/`--float-layers` kept some in float)."""
        return not self.float_layers

    def problem(self) -> str | None:
        """Why the file must not be used: missing, or changed since export (sha256 vs the record); None if intact."""
        if not self.path.is_file():
            return "missing file"
        if sha256_file(self.path) != self.sha256:
            return "sha256 differs from the export record: the file was changed after export"
        return None


def exported_files(run: RunDir, stage: str | None = None) -> list[ExportedFile]:
    """Every file of the finished exports of `run` (or of one stage).

    Raises:
        RunError: nothing exported (or the run or stage is missing), or a malformed export entry.
        IntegrityError: a file name that leads outside the run folder.
    """
    exported = [key.split("/", 1)[1] for key in run.manifest()["stages"] if key.startswith("export/")]
    stages = [stage] if stage else exported
    if not stages:
        run.require_stage("finetune")
        raise RunError(f"run {run.path} has nothing exported: run `edgecls export {run.path} --int8` first.")
    found = []
    for name in stages:
        where = f"the `export/{name}` entry of {run.manifest_path}"
        rows = run.require_stage(f"export/{name}").get("metrics", {}).get("artifacts")
        if not isinstance(rows, list):
            raise RunError(f"{where} is not shaped as edgecls writes it.")
        for row in rows:
            file = row.get("file") if isinstance(row, dict) else None
            path = run.inside(f"export/{name}/{file}") if isinstance(file, str) else None
            found.append(_typed(ExportedFile, row, where, stage=name, path=path))
    return found


@dataclass(frozen=True)
class OptimizeRecord:
    """What an optimize stage (`prune`, `qat`, `pqat`) was made from and how."""

    stage: str
    parent: str
    granularity: str


def optimize_record(run: RunDir, stage: str) -> OptimizeRecord:
    """The parent stage and weight granularity an optimize stage recorded."""
    inputs = run.require_stage(stage).get("inputs")
    where = f"the `{stage}` entry of {run.manifest_path}"
    config = inputs.get("optimize_config", {}) if isinstance(inputs, dict) else None
    parent = inputs.get("parent") if isinstance(inputs, dict) else None
    granularity = config.get("granularity", "per-channel") if isinstance(config, dict) else None
    if not isinstance(parent, str) or granularity not in ("per-channel", "per-tensor"):
        raise RunError(f"{where} is not shaped as edgecls writes it.")
    return OptimizeRecord(stage, parent, granularity)


@dataclass(frozen=True)
class ValidationRow:
    """One row of `edgecls validate`: a file on one runtime."""

    artifact: str
    stage: str
    runtime: str
    precision: str
    bytes: int
    status: str
    accuracy: float | None = None
    delta_pp: float | None = None
    agreement: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ValidationRecord:
    passed: bool
    rows: tuple[ValidationRow, ...]


def validation_record(run: RunDir) -> ValidationRecord | None:
    """The last `edgecls validate` of the run, or None if it has not run."""
    entry = run.stage("validate")
    if entry is None:
        return None
    where = f"the `validate` entry of {run.manifest_path}"
    metrics = entry.get("metrics", {})
    rows = metrics.get("rows") if isinstance(metrics, dict) else None
    if not isinstance(rows, list) or not isinstance(metrics.get("passed"), bool):
        raise RunError(f"{where} is not shaped as edgecls writes it.")
    return ValidationRecord(metrics["passed"], tuple(_typed(ValidationRow, row, where) for row in rows))


@dataclass(frozen=True)
class BenchRow:
    """One measured (or failed) file of `edgecls bench` at one thread count."""

    artifact: str
    stage: str
    precision: str
    bytes: int
    status: str
    runtime_kind: str | None = None
    threads: int | None = None
    p50_ms: float | None = None
    reason: str | None = None
    device: str | None = None  # the device URL (a fleet's rows name theirs)


@dataclass(frozen=True)
class BudgetCheck:
    what: str
    value: float
    budget: float
    ok: bool


@dataclass(frozen=True)
class BenchRecord:
    device: str
    profile: str | None
    passed: bool
    recommendation: str
    rows: tuple[BenchRow, ...]
    budgets: tuple[BudgetCheck, ...]


def bench_record(run: RunDir) -> BenchRecord | None:
    """The last `edgecls bench` of the run, or None if it has not run."""
    entry = run.stage("bench")
    if entry is None:
        return None
    where = f"the `bench` entry of {run.manifest_path}"
    metrics = entry.get("metrics")
    if not isinstance(metrics, dict) or not isinstance(metrics.get("rows"), list) or not isinstance(metrics.get("budgets"), list):
        raise RunError(f"{where} is not shaped as edgecls writes it.")
    rows = tuple(_typed(BenchRow, row, where) for row in metrics["rows"])
    budgets = tuple(_typed(BudgetCheck, check, where) for check in metrics["budgets"])
    return _typed(BenchRecord, metrics, where, rows=rows, budgets=budgets)


@dataclass(frozen=True)
class FirmwareRecord:
    """What `edgecls firmware` measured for one stage, and the device budget it was checked against."""

    stage: str
    flash_bytes: int
    arena_bytes: int
    arena_bytes_measured: int
    profile: str | None = None
    flash_budget: int | None = None
    ram_budget: int | None = None


def firmware_records(run: RunDir) -> list[FirmwareRecord]:
    """Every finished `firmware/<stage>` of the run."""
    records = []
    for key, entry in sorted(run.manifest()["stages"].items()):
        if not key.startswith("firmware/"):
            continue
        where = f"the `{key}` entry of {run.manifest_path}"
        metrics = entry.get("metrics")
        device = metrics.get("device") if isinstance(metrics, dict) else None
        budget = {"profile": None, "flash_budget": None, "ram_budget": None}
        if isinstance(device, dict):
            budget = {k: device.get(k) for k in budget}
        records.append(_typed(FirmwareRecord, {**(metrics if isinstance(metrics, dict) else {}), **budget}, where))
    return records


@dataclass(frozen=True)
class QuantDebugRecord:
    """The worst layers of a stage's int8 files (`quant_debug.json`, written by `edgecls inspect`)."""

    stage: str
    worst: dict[str, tuple[str, ...]]
    outliers: dict[str, tuple[str, ...]]


def quant_debug_record(run: RunDir, stage: str) -> QuantDebugRecord | None:
    """The per-layer int8 report of `stage`, or None if none was written."""
    import json

    path = run.inside(f"export/{stage}/quant_debug.json")
    if not path.is_file():
        return None
    where = f"{path}"
    try:
        layers = json.loads(path.read_bytes()).get("layers")
    except (ValueError, AttributeError):
        raise RunError(f"{where} is not shaped as edgecls writes it.") from None
    if not isinstance(layers, dict) or not all(isinstance(rows, list) for rows in layers.values()):
        raise RunError(f"{where} is not shaped as edgecls writes it.")
    worst, outliers = {}, {}
    for fmt, rows in layers.items():
        if not all(isinstance(row, dict) and isinstance(row.get("layer"), str) for row in rows):
            raise RunError(f"{where} is not shaped as edgecls writes it.")
        worst[fmt] = tuple(row["layer"] for row in rows)
        outliers[fmt] = tuple(row["layer"] for row in rows if row.get("outlier") is True)
    return QuantDebugRecord(stage, worst, outliers)
