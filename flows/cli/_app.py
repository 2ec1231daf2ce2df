"""Shared parts of the CLI: the console, the global options and error reporting."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console

from storage.errors import TierflowError

__all__ = ["CliState", "console", "err_console", "print_json", "state"]

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class CliState:
    """Options given before the command: ``tierflow [--config DIR] [--debug] COMMAND``."""

    config_path: str | None = None
    debug: bool = False


def state(ctx: typer.Context) -> CliState:
    """The global options of this invocation."""
    obj = ctx.find_root().obj
    return obj if isinstance(obj, CliState) else CliState()


def print_json(data: Any) -> None:
    """Print machine-readable output (plain, so it pipes into ``jq``)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def report_error(exc: BaseException) -> None:
    """One readable line (and a hint) instead of a traceback."""
    if isinstance(exc, TierflowError):
        err_console.print(f"[bold red]error:[/] {exc.message}", markup=True, soft_wrap=True)
        if exc.hint:
            err_console.print(f"[yellow]hint:[/] {exc.hint}", markup=True, soft_wrap=True)
    else:
        err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", markup=True, soft_wrap=True)
        err_console.print("[yellow]hint:[/] run again with --debug for the traceback", markup=True)
