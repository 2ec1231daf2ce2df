"""Where pipelines are found and how a spec file is read: tierflow's own
(``configs/pipelines/*.toml``, shipped with the package), a project's (its ``configs/pipelines/``,
found upward like every config; a name there wins over tierflow's) or any file given by path."""

from __future__ import annotations

import tomllib
from pathlib import Path

from tierflow.configs.layers import PACKAGED_DIR, find_config_dir
from tierflow.errors import TierflowError
from tierflow.flows.pipeline.spec import DEFAULT_PIPELINE, PipelineSpec, PipelineSpecError, parse_spec
from tierflow.flows.pipeline.spec_params import check_params

__all__ = ["find_spec", "list_specs", "load_spec", "spec_folders"]


def load_spec(path: str | Path) -> PipelineSpec:
    """Read and validate the pipeline spec at ``path``.

    Raises
    ------
    PipelineSpecError
        If it is not valid TOML, not a pipeline, or cannot run (see :func:`.spec.validate` and :func:`.spec_params.check_params`).
    """
    path = Path(path).expanduser().resolve()
    file = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise PipelineSpecError(f"{file}: cannot be read: {exc.strerror}", hint="check the path") from None
    except tomllib.TOMLDecodeError as exc:
        raise PipelineSpecError(f"{file}: not valid TOML: {exc}", hint="fix the syntax at that line") from None
    spec = parse_spec(data, file)
    check_params(spec)
    return spec


def spec_folders(config_dir: str | Path | None = None) -> list[Path]:
    """Where pipelines are looked for: the project's ``configs/pipelines`` first, then tierflow's."""
    location = find_config_dir(config_dir)
    folders = [location.config_dir / "pipelines"] if location.config_dir is not None else []
    folders.append(PACKAGED_DIR / "pipelines")
    return list(dict.fromkeys(p.resolve() for p in folders))


def list_specs(config_dir: str | Path | None = None) -> list[PipelineSpec]:
    """Every pipeline by name (a project's wins over tierflow's of the same name), validated."""
    found: dict[str, PipelineSpec] = {}
    for folder in spec_folders(config_dir):
        for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
            spec = load_spec(path)
            found.setdefault(spec.name, spec)
    return sorted(found.values(), key=lambda s: (s.name != DEFAULT_PIPELINE, s.name))


def find_spec(name_or_path: str | None, config_dir: str | Path | None = None) -> PipelineSpec:
    """The pipeline called ``name_or_path`` (default ``cells``), or the spec file at that path.

    Raises
    ------
    TierflowError
        If there is no such pipeline (listing the known ones), or the spec is invalid.
    """
    wanted = name_or_path or DEFAULT_PIPELINE
    if wanted.endswith(".toml") or "/" in wanted:
        return load_spec(wanted)
    for folder in spec_folders(config_dir):
        path = folder / f"{wanted}.toml"
        if path.is_file():
            return load_spec(path)
    names = [s.name for s in list_specs(config_dir)]
    raise TierflowError(f"no pipeline {wanted!r}", hint=f"choose one of {', '.join(names)} (`tierflow pipelines list`), "
                        "or give the path of a .toml spec")

