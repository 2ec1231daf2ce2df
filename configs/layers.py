"""Finding the configs folder and reading its TOML layers.

A configuration is read in three layers, later ones winning key by key:

1. ``<name>.def.toml``  committed defaults (from the configs folder, else the packaged copy);
2. ``<name>.user.toml`` git-ignored local overlay (credentials, site paths);
3. environment variables ``TIERFLOW_<SECTION>__<KEY>`` (applied by the settings models).

The configs folder is ``$TIERFLOW_CONFIG_DIR`` if set; otherwise an explicit path, or the first
``configs/`` folder holding a ``*.def.toml``, a ``*.user.toml`` or ``pipelines/*.toml`` found walking
upward from the working directory;
otherwise the defaults shipped with the package, rooted at the user's data directory.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tierflow.storage.errors import ConfigError

__all__ = ["ConfigLayers", "ConfigLocation", "PACKAGED_DIR", "deep_merge", "find_config_dir", "read_layers"]

PACKAGED_DIR = Path(__file__).resolve().parent
"""The folder holding the ``*.def.toml`` files shipped with tierflow."""

CONFIG_DIR_ENV = "TIERFLOW_CONFIG_DIR"
_MARKERS = ("tierflow.def.toml", "db.def.toml", "tierflow.user.toml", "db.user.toml")
"""A ``configs`` folder is tierflow's if it holds one of these, or pipeline specs: a project
may hold only its overlays and pipelines (the defaults then come from the packaged copy)."""


def _is_config_dir(path: Path) -> bool:
    if not path.is_dir():
        return False
    return any((path / marker).is_file() for marker in _MARKERS) or any((path / "pipelines").glob("*.toml"))


def _user_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tierflow"


@dataclass(frozen=True)
class ConfigLocation:
    """Where a configuration comes from.

    Attributes
    ----------
    config_dir
        The configs folder that was found, or ``None`` when only packaged defaults apply.
    project_root
        The folder relative paths are resolved against: the parent of ``config_dir``, or the
        user's data directory (``~/.local/share/tierflow``) with packaged defaults.
    how
        How the folder was found: ``"env"``, ``"explicit"``, ``"search"`` or ``"packaged"``.
    """

    config_dir: Path | None
    project_root: Path
    how: str


def find_config_dir(start: str | os.PathLike[str] | None = None) -> ConfigLocation:
    """Locate the configs folder.

    Parameters
    ----------
    start
        A configs folder, or a folder to search upward from. ``None`` searches upward from the
        working directory. ``$TIERFLOW_CONFIG_DIR`` takes precedence over both.

    Returns
    -------
    ConfigLocation
        The folder found and the project root that relative paths resolve against.

    Raises
    ------
    ConfigError
        If ``$TIERFLOW_CONFIG_DIR`` or an explicit ``start`` names a folder that does not exist.
    """
    env_dir = os.environ.get(CONFIG_DIR_ENV)
    if env_dir:
        path = Path(env_dir).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(
                f"{CONFIG_DIR_ENV}={env_dir} is not a folder",
                hint=f"point {CONFIG_DIR_ENV} at a folder holding tierflow.def.toml / db.def.toml, or unset it",
            )
        return ConfigLocation(path, path.parent, "env")
    if start is not None:
        path = Path(start).expanduser().resolve()
        if not path.exists():
            raise ConfigError(f"config path {path} does not exist")
        if path.is_file():
            path = path.parent
        if _is_config_dir(path) or path.name == "configs":
            return ConfigLocation(path, path.parent, "explicit")
        how = "explicit"
    else:
        path = Path.cwd().resolve()
        how = "search"
    for folder in (path, *path.parents):
        candidate = folder / "configs"
        if _is_config_dir(candidate):
            return ConfigLocation(candidate, folder, how)
    return ConfigLocation(None, _user_data_dir(), "packaged")


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Merge ``overlay`` over ``base`` key by key; tables merge, other values replace.

    Examples
    --------
    >>> deep_merge({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}})
    {'a': {'x': 1, 'y': 3}}
    """
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", hint="fix the syntax at that line") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None


@dataclass
class ConfigLayers:
    """The merged file layers of one configuration (environment not yet applied).

    Attributes
    ----------
    name
        ``"tierflow"`` or ``"db"``.
    location
        Where the configs folder is.
    values
        ``def`` merged with ``user``.
    files
        The files read, defaults first.
    user_values
        The user overlay alone (to say which file a bad key came from).
    """

    name: str
    location: ConfigLocation
    values: dict[str, Any]
    files: list[Path] = field(default_factory=list)
    user_values: dict[str, Any] = field(default_factory=dict)

    def source_of(self, dotted_key: str) -> str:
        """Name the file a key was read from: the user overlay if it has it, else the defaults."""
        node: Any = self.user_values
        for part in dotted_key.split("."):
            if not isinstance(node, dict) or part not in node:
                return str(self.files[0]) if self.files else f"{self.name}.def.toml"
            node = node[part]
        return str(self.files[-1])


def read_layers(name: str, location: ConfigLocation) -> ConfigLayers:
    """Read ``<name>.def.toml`` and merge ``<name>.user.toml`` over it.

    Parameters
    ----------
    name
        Base name of the configuration, ``"tierflow"`` or ``"db"``.
    location
        The configs folder, from :func:`find_config_dir`.

    Returns
    -------
    ConfigLayers
        The merged values and the list of files read.
    """
    folder = location.config_dir
    def_path = folder / f"{name}.def.toml" if folder else None
    if def_path is None or not def_path.is_file():
        def_path = PACKAGED_DIR / f"{name}.def.toml"
    files = [def_path]
    values = _read_toml(def_path)
    user_values: dict[str, Any] = {}
    if folder is not None:
        user_path = folder / f"{name}.user.toml"
        if user_path.is_file():
            user_values = _read_toml(user_path)
            values = deep_merge(values, user_values)
            files.append(user_path)
    return ConfigLayers(name, location, values, files, user_values)
