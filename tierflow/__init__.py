"""tierflow: Prefect-orchestrated data operations for large microscopy volumes.

The public API for notebooks and scripts (everything else lives in ``tierflow.flows``,
``tierflow.tasks``, ``tierflow.storage`` and ``tierflow.configs``)::

    from tierflow import load_config, open_database, run_op, run_pipeline

    cfg = load_config()                                   # configs/ found upward
    result = run_op("gaussian", "in.zarr", "out.zarr", {"sigma": 2})
    db = open_database()                                  # the results database

Names are imported on first use, so ``import tierflow`` stays cheap (no Prefect import). Flow
runs report to tierflow's managed local Prefect server, started by the first run (see
``tierflow server status`` and ``tierflow ui``), unless ``[prefect]`` says otherwise.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "load_config",
    "load_db_config",
    "load_notebook_config",
    "open_database",
    "resume_op",
    "resume_pipeline",
    "run_op",
    "run_pipeline",
]

_WHERE = {
    "load_config": ("tierflow.configs", "load_config"),
    "load_db_config": ("tierflow.configs", "load_db_config"),
    "load_notebook_config": ("tierflow.configs", "load_notebook_config"),
    "open_database": ("tierflow.flows.runtime.database", "open_database"),
    "run_op": ("tierflow.flows.ops.flow", "run_op"),
    "resume_op": ("tierflow.flows.ops.flow", "resume_op"),
    "run_pipeline": ("tierflow.flows.pipeline.flow", "pipeline"),
    "resume_pipeline": ("tierflow.flows.pipeline.flow", "resume_pipeline"),
}

_RUNS_FLOWS = {"run_op", "resume_op", "run_pipeline", "resume_pipeline"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'tierflow' has no attribute {name!r}")
    module, attribute = _WHERE[name]
    value = getattr(import_module(module), attribute)
    if name in _RUNS_FLOWS:  # their runs report to the managed Prefect server (started on first use)
        value = import_module("tierflow.flows.runtime.prefect_env").on_prefect_server(value)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
