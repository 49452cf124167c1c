"""The `edgecls` command: one thin typer command per stage over importable functions.

Exit status: 0 success; 1 a stage or gate failed; 2 bad usage, config or input.
Errors are one line on stderr, `edgecls: error: ...`; `--debug` shows the
traceback. Results go to stdout, diagnostics to stderr.
"""

from __future__ import annotations

import sys

import typer

from edgecls.cli.common import app, err
from edgecls.console import is_debug
from edgecls.errors import EdgeclsError, StageInterruptedError

# Importing a command module registers its commands; `edgecls --help` lists them in this order.
# isort: off
from edgecls.cli import train  # noqa: F401
from edgecls.cli import deploy  # noqa: F401
from edgecls.cli import check  # noqa: F401
# isort: on

__all__ = ["app", "entry", "main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and map errors to one stderr line and an exit status."""
    click_command = typer.main.get_command(app)
    try:
        status = click_command.main(args=argv, prog_name="edgecls", standalone_mode=False)
    except StageInterruptedError as exc:
        err.print(f"edgecls: {exc}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code
    except EdgeclsError as exc:
        if is_debug():
            raise
        err.print(f"edgecls: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code
    except typer.Abort:
        err.print("edgecls: interrupted", markup=False)
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:
        err.print(f"edgecls: error: {exc.format_message()}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("edgecls: interrupted; continue with `--resume`", markup=False)
        return 130
    return status if isinstance(status, int) else 0  # typer.Exit(n) comes back as n


def entry() -> None:
    """Console-script wrapper around `main`."""
    sys.exit(main())
