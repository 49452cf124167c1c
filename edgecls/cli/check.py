"""`edgecls validate`, `bench`, `report`, `run`, `evaluate` and `models`: checking, measuring and chaining the stages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgecls.cli.common import (
    ConfigOpt,
    DebugOpt,
    SetOpt,
    TrustOpt,
    command,
    err,
    import_tensorflow,
    load_cli_config,
    out,
    print_metrics,
    stage_config,
)
from edgecls.errors import ConfigError, StageInterruptedError, UnsavedResultsError


@command
def validate(
    run: Annotated[Path, typer.Argument(help="A run folder with exports.")],
    stage: Annotated[str | None, typer.Option(help="Only this export stage.")] = None,
    min_agreement_fp32: Annotated[float | None, typer.Option(help="Gate: fp32 top-1 agreement with Keras.")] = None,
    min_agreement_fp16: Annotated[float | None, typer.Option(help="Gate: fp16 top-1 agreement with Keras.")] = None,
    max_int8_drop: Annotated[float | None, typer.Option(help="Gate: accuracy points int8/dynamic may lose.")] = None,
    tflm_images: Annotated[int | None, typer.Option(help="Test images for the TFLite Micro rows (0: none).")] = None,
    trust_run: TrustOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Every exported file on the full test split vs its Keras model; exit 1 if a row fails the gate."""
    flags = {
        "validate.stage": stage,
        "validate.min_agreement_fp32": min_agreement_fp32,
        "validate.min_agreement_fp16": min_agreement_fp16,
        "validate.max_int8_drop": max_int8_drop,
        "validate.tflm_images": tflm_images,
    }
    cfg = stage_config(run, config, flags, set_).validate
    import_tensorflow()
    from edgecls.validate import markdown, run_validate

    try:
        result = run_validate(run, cfg, trust=trust_run)
    except UnsavedResultsError as exc:
        out.print(markdown(exc.result["rows"]), markup=False, highlight=False)  # computed: show it anyway
        raise
    out.print(markdown(result["rows"]), markup=False, highlight=False)
    failed = [r for r in result["rows"] if r["status"] != "pass"]
    if failed:
        err.print(f"edgecls: validation failed: {len(failed)} of {len(result['rows'])} rows", markup=False)
        raise typer.Exit(1)


@command
def bench(
    run: Annotated[Path, typer.Argument(help="A run folder with exports.")],
    device: Annotated[
        list[str] | None, typer.Option(help="host, or ssh://user@host[:port]; repeat it to measure several in parallel.")
    ] = None,
    fleet: Annotated[str | None, typer.Option(help="Fleet YAML: devices with their profile, Python and key.")] = None,
    profile: Annotated[str | None, typer.Option(help="Device profile whose budgets to check.")] = None,
    windows: Annotated[int | None, typer.Option(help="Timed windows per file (figure: median of windows).")] = None,
    window_seconds: Annotated[float | None, typer.Option(help="Least duration of a window, seconds.")] = None,
    runs: Annotated[int | None, typer.Option(help="Least timed runs of a window.")] = None,
    warmup: Annotated[int | None, typer.Option(help="Untimed runs first.")] = None,
    threads: Annotated[str | None, typer.Option(help="Comma list of thread counts (default 1 and all).")] = None,
    ssh_key: Annotated[str | None, typer.Option(help="Private key for the SSH devices.")] = None,
    known_hosts: Annotated[str | None, typer.Option(help="known_hosts file for the SSH devices.")] = None,
    remote_python: Annotated[str | None, typer.Option(help="Python on the devices.")] = None,
    stage: Annotated[str | None, typer.Option(help="Only this export stage.")] = None,
    trust_run: TrustOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Latency, throughput and memory of every exported file (or one stage's) on one device or a fleet; exit 1 over a budget."""
    flags = {
        "bench.device": device or None,
        "bench.fleet": fleet,
        "bench.profile": profile,
        "bench.windows": windows,
        "bench.window_seconds": window_seconds,
        "bench.runs": runs,
        "bench.warmup": warmup,
        "bench.threads": threads,
        "bench.ssh_key": ssh_key,
        "bench.known_hosts": known_hosts,
        "bench.remote_python": remote_python,
        "bench.stage": stage,
    }
    cfg = stage_config(run, config, flags, set_).bench
    import_tensorflow()
    from edgecls.bench import markdown, run_bench

    try:
        result = run_bench(run, cfg, trust=trust_run)
    except UnsavedResultsError as exc:
        out.print(markdown(exc.result), markup=False, highlight=False)  # measured: show it anyway
        raise
    out.print(markdown(result), markup=False, highlight=False)
    if not result["passed"]:
        err.print(f"edgecls: bench failed: {_bench_failure(result, cfg.profile)}", markup=False)
        raise typer.Exit(1)


def _bench_failure(result: dict, profile: str | None) -> str:
    """Why a bench did not pass, in a few words: failed devices, unmeasured files, or a budget."""
    if "devices" in result:
        failed = [s for s in result["summary"] if not s["passed"]]
        return f"{len(failed)} of {len(result['summary'])} device(s) failed or over budget: " + ", ".join(s["url"] for s in failed)
    failed = [r for r in result["rows"] if r["status"] != "pass"]
    return f"{len(failed)} file(s) not measured" if failed else f"over budget of profile {profile}"


@command
def report(
    run: Annotated[Path, typer.Argument(help="A run folder with a finished finetune stage.")],
    wrong_images: Annotated[int | None, typer.Option(help="Most confidently wrong test images to show (0: none).")] = None,
    trust_run: TrustOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """report.md and a self-contained report.html with plots, for every stage the run finished."""
    cfg = stage_config(run, config, {"report.wrong_images": wrong_images}, set_).report
    import_tensorflow()
    from edgecls.report import run_report

    entry = run_report(run, cfg, trust=trust_run)
    print_metrics(f"report: {run}", {"report.html": str(run / "report.html"), "figures": ", ".join(entry["metrics"]["figures"])})


@command
def run_(
    config: Annotated[Path, typer.Argument(help="A YAML config (see configs/).")],
    set_: SetOpt = None,
    trust_run: TrustOpt = False,
    debug: DebugOpt = False,
) -> None:
    """The whole chain from one config: finetune, optimize, export, firmware, validate, bench, report.

    A stage whose config and inputs are unchanged since the last `edgecls run` is skipped unless its
    gate or budget failed; an interrupted run continues where it stopped. Exit 1 when a gate or budget
    failed (after the report).
    """
    cfg = load_cli_config(config, {}, set_)
    import_tensorflow()
    from edgecls.pipeline import pipeline_summary, run_pipeline

    def progress(stage: str, what: str, detail: str) -> None:
        err.print(f"edgecls run: {stage}: {'running' if what == 'run' else what}" + (f" ({detail})" if detail else ""),
                  markup=False, highlight=False)  # fmt: skip

    try:
        result = run_pipeline(cfg, trust=trust_run, progress=progress)
    except KeyboardInterrupt:
        raise StageInterruptedError(f"interrupted; `edgecls run {config}` continues where it stopped.") from None
    print_metrics(f"edgecls run: {cfg.run_path}", pipeline_summary(result))
    if not result.passed:
        err.print(f"edgecls: run failed: {'; '.join(result.failures)} (see {cfg.run_path / 'report.html'})", markup=False)
        raise typer.Exit(1)


@command
def evaluate(
    run: Annotated[Path, typer.Argument(help="A run folder.")],
    data: Annotated[str | None, typer.Option(help="Another data source with the same classes.")] = None,
    trust_run: TrustOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Re-compute the test metrics of a run's saved model (writes nothing).

    The run's own test split by default; `--data` (or the `data` section of `--config`/`--set`) another source.
    """
    overrides = {"data.source": data, "data.val_fraction": 0.0 if data else None}
    cfg = stage_config(run, config, overrides, set_)
    import_tensorflow()
    from edgecls.metrics import run_evaluate

    metrics = run_evaluate(run, cfg.data if (data or config or set_) else None, trust=trust_run)
    print_metrics(f"evaluate: {run}", {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))})
    table = Table("class", "accuracy")
    for class_name, accuracy in metrics["per_class_accuracy"].items():
        table.add_row(class_name, f"{accuracy:.4f}")
    out.print(table)


@command
def models(
    input_size: Annotated[int | None, typer.Option(help="Input side for the MAC count (default model.input_size).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """List every backbone: parameters, MACs at an input size, ImageNet weights."""
    input_size = load_cli_config(config, {}, set_).model.input_size if input_size is None else input_size
    if not 32 <= input_size <= 224:
        raise ConfigError(f"`--input-size` must be in [32, 224] pixels; got {input_size}.")
    import_tensorflow()
    from edgecls.models import SPECS, create_model, list_models
    from edgecls.models.stats import model_stats
    from edgecls.models.weights import imagenet_file, keras_cache_dir

    table = Table("model", "alpha", "alpha range", "blocks", "params", f"MACs @{input_size}px", "ImageNet alphas", "cached")
    for name in list_models():
        spec = SPECS[name]
        classifier, _ = create_model(name, input_size=max(input_size, spec.min_input_size), weights="none")
        stats = model_stats(classifier)
        cached = (keras_cache_dir() / imagenet_file(name, spec.default_alpha, 224).fname).exists()
        table.add_row(
            name,
            f"{spec.default_alpha:g}",
            "-".join(f"{a:g}" for a in spec.alpha_range),
            str(spec.num_blocks),
            f"{stats['params'] / 1e6:.2f} M",
            f"{stats['macs'] / 1e6:.1f} M",
            ", ".join(f"{a:g}" for a in spec.imagenet_alphas),
            "yes" if cached else "no",
        )
    out.print(table)
    out.print(f"Weights cache: {keras_cache_dir()} (10-class head; `cached` is for the default alpha at 224 px)")
