"""The ``tierflow`` command line (Typer + Rich; the commands are in :mod:`flows.cli.root`).

:func:`main` first offers a flow-running command to the project's warm executor
(:mod:`flows.runtime.executor_client`: no Typer, Rich or Prefect imported for that); otherwise
the command runs in this process. ``app`` (the Typer application) is imported on first use.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``tierflow`` console script."""
    from tierflow.flows.runtime.executor_client import delegate

    code = delegate(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from tierflow.flows.cli.root import main as run_here

    run_here()


def __getattr__(name: str) -> Any:
    if name == "app":
        from tierflow.flows.cli.root import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
