"""The command line's help says what it means: config section names such as ``[retention]`` are
text, not Rich markup that swallows them; op names are never cut off in ``tierflow ops list``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
