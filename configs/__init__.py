"""Configuration of tierflow: the ``*.def.toml`` defaults, ``*.user.toml`` overlays and the
typed loader that reads them.

>>> from configs import load_config, load_db_config   # doctest: +SKIP
>>> load_config().tier_root("source")                  # doctest: +SKIP

Names are imported on first use (PEP 562): :mod:`configs.layers` (finding the configs folder)
loads no pydantic, which the command line's hand-over to the warm executor relies on
(:mod:`flows.runtime.executor_client`: pydantic-settings is ~0.14 s of a 0.1 s budget).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tierflow.configs.layers import deep_merge, find_config_dir  # noqa: F401
    from tierflow.configs.notebook import load_notebook_config  # noqa: F401
    from tierflow.configs.settings import DatabaseConfig, TierflowConfig, load_config, load_db_config  # noqa: F401

__all__ = [
    "DatabaseConfig",
    "TierflowConfig",
    "deep_merge",
    "find_config_dir",
    "load_config",
    "load_db_config",
    "load_notebook_config",
]

_MODULE_OF = {
    "deep_merge": "layers",
    "find_config_dir": "layers",
    "load_notebook_config": "notebook",
    "DatabaseConfig": "settings",
    "TierflowConfig": "settings",
    "load_config": "settings",
    "load_db_config": "settings",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
