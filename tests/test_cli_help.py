"""The command line's help says what it means: config section names such as ``[retention]`` are
text, not Rich markup that swallows them (in every help text and in error messages); options show
what to type (``PATH``, ``KEY=VALUE``), not Python types; every command has ``--json``; op names
are never cut off in ``tierflow ops list`` and are listed when none is given; the shell completes
op and pipeline names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

TIERFLOW = str(Path(sys.executable).with_name("tierflow"))


def _help(*args: str, width: int = 200) -> str:
    env = {**os.environ, "COLUMNS": str(width), "TERM": "dumb"}
    return subprocess.run([TIERFLOW, *args], capture_output=True, text=True, check=True, env=env, timeout=120).stdout


@pytest.mark.parametrize(("args", "expected"), [
    (("--help",), "rules of [retention]"),
    (("op", "gaussian", "--help"), "[execution].block_shape"),
    (("preflight", "--help"), "[execution].block_shape"),
    (("serve", "--help"), "[pipeline].data_url"),
    (("view", "--help"), "[pipeline].data_url"),
])
def test_config_section_names_survive_in_help(tmp_path, args, expected):
    assert expected in " ".join(_help(*args).split())


def test_op_names_are_never_cut_off_in_the_op_list():
    from tierflow.tasks.ops.registry import op_names

    listed = _help("ops", "list", width=80)
    assert all(name in listed for name in op_names())


SECTION = re.compile(r"\[[a-z_.]+\]")  # a config section or table as help names it: [retention], [outputs]
PYTHON_TYPE = re.compile(r"<[a-z][a-z \[\],|]*>")  # what typer shows without a metavar: <bool>, <list[str]>, <int range>
METAVAR = re.compile(r"[A-Z][A-Z_]*(?:[=,|.][A-Z_]+)*")  # PATH, RAW_DIR, KEY=VALUE, Z,Y,X, PATH|URI


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def _tree() -> list[tuple[tuple[str, ...], Any]]:
    """Every command and group of ``tierflow``, as typer builds them (help texts as written)."""
    from tierflow.flows.cli import app

    return list(_commands(typer.main.get_command(app)))


def _render(*args: str) -> str:
    from tierflow.flows.cli import app

    done = CliRunner().invoke(app, list(args), env={"COLUMNS": "200", "TERM": "dumb"})
    return done.output


def test_every_help_text_shows_its_section_names_and_what_to_type():
    from tierflow.tasks.ops.registry import all_ops

    tree = _tree()
    pages = [(path, [command.help or "", *(getattr(p, "help", None) or "" for p in command.params)]) for path, command in tree]
    for spec in all_ops():  # `tierflow op NAME --help` adds the op's summary and parameters
        pages.append((("op", spec.name), [spec.summary, *(info["help"] for info in spec.describe()["params"].values())]))
    for path, texts in pages:
        shown = " ".join(_render(*path, "--help").split())
        assert shown.startswith("Usage: tierflow"), (path, shown[:300])
        for token in {t for text in texts for t in SECTION.findall(text)}:
            assert token in shown, f"`tierflow {' '.join(path)} --help` lost {token}"
        assert not PYTHON_TYPE.findall(shown), f"`tierflow {' '.join(path)} --help` shows {PYTHON_TYPE.findall(shown)}"
    assert len(tree) > 30 and any("[retention]" in t for _, texts in pages for t in texts)  # the walk saw the tree


def test_every_value_has_a_metavar_and_flags_have_none():
    for path, command in _tree():
        for param in command.params:
            takes_value = not getattr(param, "is_flag", False)
            if takes_value:
                assert param.metavar and METAVAR.fullmatch(param.metavar), (path, param.name, param.metavar)
    flags = [row for row in _render("run", "pipeline", "--help").splitlines() if "--json" in row or "--help" in row]
    assert flags and all(re.search(r"--(json|help)\s{2,}\S", row) and "<" not in row for row in flags), flags


def test_every_command_that_reports_something_can_say_it_in_json():
    leaves = [(path, command) for path, command in _tree() if path and not hasattr(command, "commands")]
    missing = [" ".join(path) for path, command in leaves
               if path not in (("worker",), ("db", "psql"))
               and not any("--json" in p.opts for p in command.params)]  # worker becomes Prefect's worker, db psql psql
    assert not missing, f"no --json: {missing}"


def test_an_error_naming_a_config_key_prints_it_literally(capsys):
    from tierflow.errors import MemoryLimitError
    from tierflow.flows.cli._app import report_error
    from tierflow.flows.runtime.memory_guard import MemoryGuard

    with pytest.raises(MemoryLimitError) as stopped:
        MemoryGuard(0.001).check("smooth", run_id=3)
    report_error(stopped.value)
    printed = " ".join(capsys.readouterr().err.split())
    assert "([execution].memory_limit_percent)" in printed and "`tierflow resume 3`" in printed


def test_an_op_command_without_an_op_lists_every_op():
    from tierflow.tasks.ops.registry import op_names

    said = " ".join(_render("op", "-i", "in.zarr", "-o", "out.zarr").split())
    assert "Missing argument 'OP'" in said
    assert "tophat" in op_names() and all(name in said for name in op_names())  # the labops plugin's op too


def test_the_shell_completes_op_and_pipeline_names():
    def complete(words: str) -> list[str]:
        env = {**os.environ, "_TIERFLOW_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split(" ")) - 1)}
        return subprocess.run([TIERFLOW], capture_output=True, text=True, env=env, timeout=120).stdout.split()

    assert complete("tierflow op gau") == ["gaussian"]
    assert set(complete("tierflow ops show ")) >= {"gaussian", "watershed", "tophat"}
    assert set(complete("tierflow run pipeline ")) >= {"cells", "nuclei"}
    assert "--install-completion" in _render("--help")
