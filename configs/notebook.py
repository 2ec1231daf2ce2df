"""Notebook configuration, with the seed's semantics: ``config.def.toml`` (committed) and
``config.user.toml`` (git-ignored, your overrides) in the notebook's folder or the nearest one
above it, merged key by key, with ``_meta`` telling where it came from and the resolved paths."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tierflow.configs.layers import _read_toml, deep_merge
from tierflow.storage.errors import ConfigError

__all__ = ["load_notebook_config"]

_PATH_SUFFIXES = ("_dir", "_path", "_root", "_file")


def _resolve_paths(values: dict[str, Any], base: Path, prefix: str = "") -> dict[str, str]:
    resolved: dict[str, str] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            resolved.update(_resolve_paths(value, base, f"{dotted}."))
        elif isinstance(value, str) and key.endswith(_PATH_SUFFIXES) and value and "://" not in value:
            resolved[dotted] = str((base / Path(value).expanduser()).resolve())
    return resolved


def load_notebook_config(start: str | os.PathLike[str] | None = None, *, name: str = "config") -> dict[str, Any]:
    """Find ``<name>.def.toml`` upward from ``start`` (default: the working directory, i.e. the
    notebook's folder), merge ``<name>.user.toml`` beside it over it, and add ``_meta``.

    Returns
    -------
    dict
        The merged values, plus ``_meta``: ``config_dir``, ``files`` (read, in order) and
        ``paths`` (every key ending in ``_dir``, ``_path``, ``_root`` or ``_file``, resolved
        against the config folder).

    Raises
    ------
    ConfigError
        If no ``<name>.def.toml`` is found, naming where the search started.
    """
    here = Path(start or Path.cwd()).expanduser().resolve()
    for folder in (here, *here.parents):
        defaults = folder / f"{name}.def.toml"
        if defaults.is_file():
            break
    else:
        raise ConfigError(f"no {name}.def.toml in {here} or any folder above it",
                          hint=f"run the notebook from notebooks/ or pass the folder holding {name}.def.toml")
    files = [defaults]
    values = _read_toml(defaults)
    user = folder / f"{name}.user.toml"
    if user.is_file():
        values = deep_merge(values, _read_toml(user))
        files.append(user)
    values["_meta"] = {"config_dir": str(folder), "files": [str(f) for f in files], "paths": _resolve_paths(values, folder)}
    return values
