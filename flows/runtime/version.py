"""tierflow's code version as the runs table records it (kept light: the op memo records runs
without importing SQLAlchemy, see :mod:`flows.ops.quick`)."""

from __future__ import annotations

import functools
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = ["code_version"]


@functools.cache
def code_version() -> str:
    """tierflow's version, plus the git commit when running from a checkout."""
    try:
        text = version("tierflow")
    except PackageNotFoundError:
        text = "unknown"
    root = Path(__file__).resolve().parents[1]
    if (root / ".git").exists():
        try:
            sha = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
            if sha:
                text += f"+g{sha}"
        except (OSError, subprocess.SubprocessError):
            pass
    return text
