"""The environment a process started with, before tierflow set anything in it.

:mod:`flows.runtime.prefect_env` records it before applying tierflow's Prefect defaults; a
``tierflow`` command hands it to the warm executor (:mod:`flows.runtime.executor_client`), whose
child takes it over (:func:`flows.runtime.prefect_env.reset_environment`).
"""

from __future__ import annotations

import os

__all__ = ["capture", "launch_environment", "replace"]

_LAUNCH_ENV: dict[str, str] | None = None


def capture() -> None:
    """Record ``os.environ`` as the launch environment, once per process."""
    global _LAUNCH_ENV
    if _LAUNCH_ENV is None:
        _LAUNCH_ENV = dict(os.environ)


def replace(env: dict[str, str]) -> None:
    """Make ``env`` the launch environment (a child of the warm executor)."""
    global _LAUNCH_ENV
    _LAUNCH_ENV = dict(env)


def launch_environment() -> dict[str, str]:
    """A copy of the launch environment (``os.environ`` if none was recorded)."""
    return dict(_LAUNCH_ENV if _LAUNCH_ENV is not None else os.environ)
