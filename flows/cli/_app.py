"""Shared parts of the CLI: the console, the global options and error reporting."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from tierflow.storage.errors import TierflowError

__all__ = ["CliState", "PlainHelpGroup", "console", "err_console", "print_json", "refresh_consoles", "state"]

_CONSOLE_OPTIONS: dict[str, dict[str, Any]] = {"console": {"highlight": False, "soft_wrap": True},
                                               "err_console": {"stderr": True, "highlight": False, "soft_wrap": True}}
console = Console(**_CONSOLE_OPTIONS["console"])
err_console = Console(**_CONSOLE_OPTIONS["err_console"])


def refresh_consoles() -> None:
    """Set the two consoles up again for the process's current stdout/stderr and environment.

    A Rich console decides colours, width and terminal-ness when it is made; the warm
    executor's children (:mod:`flows.cli.executor`) take over another process's terminal
    after this module was imported, and every command module holds these objects by name, so
    they are initialised again in place.
    """
    for name, options in _CONSOLE_OPTIONS.items():
        globals()[name].__init__(**options)


@dataclass
class CliState:
    """Options given before the command: ``tierflow [--config DIR] [--debug] COMMAND``."""

    config_path: str | None = None
    debug: bool = False


def state(ctx: typer.Context) -> CliState:
    """The global options of this invocation."""
    obj = ctx.find_root().obj
    return obj if isinstance(obj, CliState) else CliState()


class PlainHelpGroup(TyperGroup):
    """The ``tierflow`` command group: every help text below it (docstrings, ``help=``) is plain
    text, so a config section such as ``[retention]`` shows as typed instead of being taken for
    Rich markup and deleted; and a flag shows no value placeholder (typer would print ``<bool>``).
    Help texts in the code therefore need no escaping; text made for help with markup in it
    (``tierflow op NAME --help``) is added after this, escaped where it quotes."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            plain_help(command, ctx)
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        plain_help(self, ctx)
        super().format_help(ctx, formatter)


def plain_help(command: Any, ctx: Any) -> None:
    """Escape the help of ``command``, of its parameters and (for a group) of every command
    below it, once; blank the placeholder of its flags."""
    if getattr(command, "_tierflow_plain_help", False):
        return
    command._tierflow_plain_help = True
    command.help = escape(_prose(command.help)) if command.help else command.help
    for param in [*command.params, command.get_help_option(ctx)]:
        if param is None:
            continue
        if getattr(param, "help", None):
            param.help = escape(_prose(param.help))
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # a flag takes no value: show none (rich help shows the metavar as it is)
        if param.param_type_name == "argument" and param.metavar:
            param.display_type_rich = _no_type  # its metavar (RAW_DIR, RUN) is the name shown: no <str> next to it
    for sub in getattr(command, "commands", {}).values():
        plain_help(sub, ctx)


def _prose(text: str) -> str:
    """A docstring as help prose: its lines joined into paragraphs (the terminal wraps them, not
    the docstring's line breaks) and reST's ``code`` shown as `code`."""
    return re.sub(r"(?<!\n)\n(?!\n)", " ", text).replace("``", "`")


def _no_type(ctx: Any) -> None:
    return None


def print_json(data: Any) -> None:
    """Print machine-readable output (plain, so it pipes into ``jq``)."""
    sys.stdout.write(json.dumps(data, indent=2, default=_plain) + "\n")
    sys.stdout.flush()  # a command that goes on (serve) has said what it serves


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

