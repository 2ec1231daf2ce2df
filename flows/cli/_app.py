"""Shared parts of the CLI: the console, the global options and error reporting."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from tierflow.storage.errors import TierflowError

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
    sys.stdout.write(json.dumps(data, indent=2, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    """JSON for what json does not know: typed results by their ``to_dict()``, the rest as text."""
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if callable(to_dict) else str(value)


def report_error(exc: BaseException) -> None:
    """One readable line (and a hint) instead of a traceback; the text is printed literally
    (a name such as ``[/]x`` in a message is not Rich markup)."""
    if isinstance(exc, TierflowError):
        message, hint = exc.message, exc.hint
    else:
        message, hint = f"{type(exc).__name__}: {exc}", "run again with --debug for the traceback"
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    if hint:
        err_console.print(f"[yellow]hint:[/] {escape(hint)}", markup=True, soft_wrap=True)


def parse_params(values: list[str] | None) -> dict[str, str]:
    """``["sigma=2", "mode=reflect"]`` -> ``{"sigma": "2", "mode": "reflect"}`` (``--param``,
    ``--with``); a value without ``=`` is refused with an example."""
    params = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TierflowError(f"{item!r} is not key=value", hint="e.g. --param sigma=2 or --with markers=seeds.zarr")
        params[key.strip()] = value.strip()
    return params

