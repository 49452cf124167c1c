"""What every `edgecls` command shares: the typer app, consoles, option types, config loading and output helpers."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from edgecls.console import is_debug, set_debug
from edgecls.errors import ConfigError, StageInterruptedError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fine-tune, optimize, export and validate image classifiers for edge devices.",
)
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)  # full tables in logs
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML config (e.g. a run's config.yaml).")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override any config key: section.key=value.")]
TrustOpt = Annotated[
    bool,
    typer.Option("--trust-run", help="Load model files with Lambda layers (they run code): only for runs you trust."),
]
# Config keys whose command-line flag is not `--<key>`.
FLAGS = {
    "data.source": "--data",
    "model.name": "--model",
    "export.formats": "--format",
    "export.precisions": "--precision",
    "optimize.structured": "--structured-2-4",
}


def command(function):
    """Register a CLI command: `--debug` switches tracebacks on, and Ctrl-C becomes one clear line (exit 130).

    (typer would turn KeyboardInterrupt into a silent exit 130.)
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        set_debug(bool(kwargs.get("debug")))
        try:
            return function(*args, **kwargs)
        except KeyboardInterrupt:
            raise StageInterruptedError(f"interrupted: `edgecls {function.__name__}` recorded nothing new.") from None

    return app.command(name=function.__name__.rstrip("_"))(wrapper)


def flag_name(key: str) -> str:
    return FLAGS.get(key, "--" + key.split(".", 1)[-1].replace("_", "-"))


def load_cli_config(path: Path | None, flags: dict[str, Any], sets: list[str] | None, names: dict[str, str] | None = None):
    """The `EdgeConfig` of `--config`, the command's flags and `--set`; an error names the flag the user typed.

    Args:
        path: A YAML config, or None for the defaults.
        flags: Config key -> the value of the flag that sets it (None when not given).
        sets: `--set section.key=value` items.
        names: Flag names that differ from `--<key>` for this command (e.g. calibrate's `--samples`).
    """
    from edgecls.config import load_config

    try:
        return load_config(path, {**flags, **parse_sets(sets)})
    except ConfigError as exc:
        message = str(exc)
        for key, value in flags.items():
            if value is not None and message.startswith(f"`{key}`"):
                raise ConfigError(f"`{(names or {}).get(key, flag_name(key))}`" + message[len(key) + 2 :]) from None
        raise


def stage_config(run: Path, config: Path | None, flags: dict[str, Any], sets: list[str] | None):
    """The config of a later stage: `--config`, else the run's own saved config.yaml; then flags and `--set`."""
    saved = run / "config.yaml"
    return load_cli_config(config if config is not None else (saved if saved.is_file() else None), flags, sets)


def import_tensorflow() -> None:
    """Import TensorFlow once, quietly (its log level defaults to errors only)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from edgecls.run import quiet_native_stderr

    with quiet_native_stderr(enabled=not is_debug()):
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
        tf.config.list_physical_devices()  # the CUDA probe logs here on CPU-only machines
    if not is_debug():
        from edgecls.console import silence_known_noise

        silence_known_noise()


def warn(message: str) -> None:
    """One warning line on stderr."""
    err.print(f"edgecls: warning: {message}", markup=False, highlight=False, soft_wrap=True)


def parse_sets(values: list[str] | None) -> dict[str, Any]:
    overrides = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"`--set` takes section.key=value; got {item!r}.")
        overrides[key] = value
    return overrides


def print_metrics(title: str, metrics: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False)
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    out.print(table)
