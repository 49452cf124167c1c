"""`edgecls run CONFIG.yaml`: the whole chain from one config, redoing only what changed.

finetune -> optimize -> export -> firmware -> validate -> bench -> report, each through its
stage's own `run_<stage>` function, on one run folder. After a stage finishes, the manifest's
`pipeline` record keeps the sha256 of the config sections it depends on and the `finished`
time of every manifest entry it wrote. On the next `edgecls run` a stage is skipped when its
sections hash the same, its entries are the ones it recorded (nobody re-ran it by hand), no
stage before it ran again, and its gate or budget did not fail (a failed validate or bench runs
again: a device back online, a fixed edgecls); otherwise it and every stage after it run. An
interrupted fine-tuning resumes from its last epoch; the later stages write atomically, so they
simply run again.

Firmware and validate take the stage export wrote (the last one optimize wrote, else finetune),
not files an earlier export left in the run folder. A failed gate (validate) or budget (bench)
does not stop the chain: the report still runs, and the pipeline then reports failure (the CLI
exits 1).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

from edgecls.config import EdgeConfig
from edgecls.run import RunDir

SectionT = TypeVar("SectionT")

# The config sections each stage depends on (the stages before it are accounted for by the chain).
SECTIONS = {
    "finetune": ("run", "data", "model", "train"),
    "optimize": ("optimize",),
    "export": ("export",),
    "firmware": ("firmware",),
    "validate": ("validate",),
    "bench": ("bench",),
    "report": ("report",),
}


@dataclass
class PipelineResult:
    """What one `edgecls run` did.

    Attributes:
        ran: Stages that ran, in order.
        skipped: Stages skipped because nothing they depend on changed.
        not_applicable: Stages the config leaves out, with the reason.
        failures: Gates or budgets that failed (the chain went on to the report).
    """

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    not_applicable: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def config_digest(cfg: EdgeConfig, stage: str) -> str:
    """sha256 of the config sections `stage` depends on (the run name and folder excluded)."""
    values = cfg.to_dict()
    chosen = {name: values[name] for name in SECTIONS[stage]}
    if "run" in chosen:
        chosen["run"] = {"seed": chosen["run"]["seed"]}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()


def _why_not(cfg: EdgeConfig, stage: str) -> str | None:
    """Why the config leaves `stage` out, or None when it applies."""
    if stage not in cfg.pipeline.stages:
        return "not in `pipeline.stages`"
    from edgecls.optimize import planned_stages

    if stage == "optimize" and not planned_stages(cfg.optimize):
        return "nothing asked (`optimize.prune`, `optimize.prune_channels`, `optimize.fit`, `optimize.qat`)"
    if stage == "firmware" and not ("tflite" in cfg.export.formats and "int8" in cfg.export.precisions):
        return "no int8 TFLite file is exported"
    if stage == "firmware" and cfg.export.io != "int8":
        return "TFLite Micro needs int8 input and output (`export.io: int8`)"
    return None


def _up_to_date(run: RunDir, stage: str, digest: str) -> bool:
    record = run.manifest().get("pipeline", {}).get(stage)
    if not isinstance(record, dict) or record.get("config_sha256") != digest:
        return False
    entries = record.get("entries")
    if not isinstance(entries, dict) or not entries:
        return False
    return all((run.stage(key) or {}).get("finished") == finished for key, finished in entries.items())


def _finetune(cfg: EdgeConfig, run: RunDir, trust: bool) -> list[str]:
    from edgecls.config import load_config
    from edgecls.train import run_finetune

    unfinished = run.path.exists() and run.stage("finetune") is None
    same = unfinished and (run.path / "config.yaml").is_file() and load_config(run.path / "config.yaml") == cfg
    if same:
        run_finetune(cfg, resume=True)
    else:
        run_finetune(cfg, force=run.path.exists())
    return ["finetune"]


def _optimize(cfg: EdgeConfig, run: RunDir, trust: bool) -> list[str]:
    from edgecls.optimize import planned_stages, run_optimize

    run_optimize(run.path, cfg.optimize, force=True, trust=trust)
    return planned_stages(cfg.optimize)


def _export_stage(cfg: EdgeConfig) -> str:
    """The stage the pipeline exports: the configured one, else the last one optimize wrote, else finetune."""
    from edgecls.optimize import planned_stages

    planned = planned_stages(cfg.optimize) if "optimize" in cfg.pipeline.stages else []
    return cfg.export.stage or (planned[-1] if planned else "finetune")


def _at_export_stage(section: SectionT, cfg: EdgeConfig) -> SectionT:
    """A stage section (export, firmware, validate, bench) pinned to its own `stage`, else the one the chain exports.

    A stage exported earlier (by hand, or before `optimize` was added to the config) may still be in the
    run folder; it is not what the chain delivers, so firmware, validate and bench leave it alone.
    """
    return dataclasses.replace(section, stage=section.stage or _export_stage(cfg))


def _export(cfg: EdgeConfig, run: RunDir, trust: bool) -> list[str]:
    from edgecls.export import run_export

    export = _at_export_stage(cfg.export, cfg)
    run_export(run.path, export, force=True, trust=trust)
    return [f"export/{export.stage}"]


def _firmware(cfg: EdgeConfig, run: RunDir, trust: bool) -> list[str]:
    from edgecls.firmware import run_firmware

    firmware = _at_export_stage(cfg.firmware, cfg)
    run_firmware(run.path, firmware, force=True)
    return [f"firmware/{firmware.stage}"]


def _validate(cfg: EdgeConfig, run: RunDir, trust: bool) -> list[str]:
    from edgecls.validate import run_validate

    run_validate(run.path, _at_export_stage(cfg.validate, cfg), trust=trust)
    return ["validate"]


def _bench(cfg: EdgeConfig, run: RunDir, trust: bool) -> list[str]:
    from edgecls.bench import run_bench

    run_bench(run.path, _at_export_stage(cfg.bench, cfg), trust=trust)
    return ["bench"]


def _report(cfg: EdgeConfig, run: RunDir, trust: bool) -> list[str]:
    from edgecls.report import run_report

    run_report(run.path, cfg.report, trust=trust)
    return ["report"]


RUNNERS = {
    "finetune": _finetune,
    "optimize": _optimize,
    "export": _export,
    "firmware": _firmware,
    "validate": _validate,
    "bench": _bench,
    "report": _report,
}


def _failure(run: RunDir, stage: str) -> str | None:
    """The gate or budget a finished validate/bench stage failed, if any."""
    from edgecls.records import bench_record, validation_record

    if stage == "validate" and not validation_record(run).passed:
        return "validation gate failed"
    if stage == "bench" and not bench_record(run).passed:
        return "device budget or a benchmark row failed"
    return None


def run_pipeline(cfg: EdgeConfig, *, trust: bool = False, progress=None) -> PipelineResult:
    """Run every stage of `cfg.pipeline.stages` that is not up to date, in order, into `cfg.run_path`.

    Args:
        cfg: The whole config (every section is used by its stage).
        trust: Load model files with Lambda layers (`--trust-run`).
        progress: Called with (stage, "run" | "skip" | "n/a", detail) as the chain goes.

    Returns:
        A `PipelineResult`; `passed` is False when a gate or budget failed.

    Raises:
        EdgeclsError: a stage could not run (bad input, a converter failure): the chain stops there.
    """
    run = RunDir(cfg.run_path)
    result = PipelineResult()
    changed = False
    for stage in RUNNERS:
        reason = _why_not(cfg, stage)
        if reason:
            result.not_applicable[stage] = reason
            _tell(progress, stage, "n/a", reason)
            continue
        digest = config_digest(cfg, stage)
        unchanged = not changed and run.path.exists() and _up_to_date(run, stage, digest)
        if unchanged and _failure(run, stage) is None:
            result.skipped.append(stage)
            _tell(progress, stage, "skip", "unchanged")
        else:
            changed = True
            _tell(progress, stage, "run", "it failed last time" if unchanged else "")
            keys = RUNNERS[stage](cfg, run, trust)
            run.record_pipeline(stage, digest, {key: run.require_stage(key)["finished"] for key in keys})
            result.ran.append(stage)
            if failure := _failure(run, stage):  # a skipped stage has none: it was just checked
                result.failures.append(failure)
    return result


def _tell(progress, stage: str, what: str, detail: str) -> None:
    if progress is not None:
        progress(stage, what, detail)


def pipeline_summary(result: PipelineResult) -> dict[str, Any]:
    """The result as plain data, for the CLI's table."""
    return {
        "ran": ", ".join(result.ran) or "nothing",
        "skipped (unchanged)": ", ".join(result.skipped) or "none",
        "not applicable": "; ".join(f"{k}: {v}" for k, v in result.not_applicable.items()) or "none",
        "result": "passed" if result.passed else "FAILED: " + "; ".join(result.failures),
    }
