"""A run's parameters: the typed values of its pipeline's ``[params]`` (defaults from the spec,
``[pipeline]`` in ``configs/`` for a site, ``--param`` on top) and the run-level settings
(``block_shape``), validated on their own so that the CLI refuses a bad one before any flow
starts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tierflow.configs import TierflowConfig
from tierflow.flows.pipeline.library import find_spec
from tierflow.flows.pipeline.spec import PipelineSpec
from tierflow.flows.pipeline.spec_params import resolve_values
from tierflow.storage.errors import InvalidParameterError
from tierflow.storage.geometry import parse_block_shape

__all__ = ["RUN_SETTINGS", "PipelineParams"]

RUN_SETTINGS = ("block_shape", "shard_shape")
"""Parameters of every run, whatever its pipeline (``--param block_shape=8,64,64``,
``--param shard_shape=16,256,256``)."""

_NOT_PARAMS = {"block_shape", "shard_shape", "neuroglancer_url", "data_url"}


@dataclass(frozen=True)
class PipelineParams:
    """A run's parameters: ``values`` by name (read also as attributes: ``params.sigma``) and
    its ``block_shape``."""

    values: Mapping[str, Any] = field(default_factory=dict)
    block_shape: tuple[int, int, int] = (16, 128, 128)
    spec_digest: str = ""
    shard_shape: tuple[int, int, int] | None = None
    """Shards (z, y, x) of the sample images (zarr v3 sharding); None: unsharded."""
    """The content of the pipeline these are parameters of (:attr:`PipelineSpec.digest`)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("values", "block_shape", "spec_digest", "shard_shape"):
            raise AttributeError(name)
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(f"the pipeline has no parameter {name!r}") from None

    def model_dump(self, mode: str = "python") -> dict[str, Any]:
        """The values and settings as one mapping (what the runs table records)."""
        dumped = {**self.values, "block_shape": list(self.block_shape) if mode == "json" else self.block_shape}
        if self.shard_shape is not None:
            dumped["shard_shape"] = list(self.shard_shape) if mode == "json" else self.shard_shape
        return dumped

    @classmethod
    def from_config(cls, config: TierflowConfig, overrides: Mapping[str, Any] | None = None,
                    spec: PipelineSpec | None = None) -> PipelineParams:
        """``spec``'s parameters (default: the ``cells`` pipeline) from its defaults, ``[pipeline]``
        in ``configs/`` and ``overrides`` (e.g. from ``--param``), and the run's block shape.

        Raises
        ------
        TierflowError
            Naming the parameter at fault and the accepted ones.
        """
        spec = spec or find_spec(None, config.meta.config_dir)
        overrides = dict(overrides or {})
        block_shape = overrides.pop("block_shape", config.pipeline.block_shape)
        try:
            shape = parse_block_shape(block_shape, key="block_shape", ndim=3)
        except InvalidParameterError as exc:
            raise InvalidParameterError(f"pipeline parameter block_shape={block_shape!r}: {exc.message}",
                                        hint="block_shape must be 3 positive integers z,y,x, e.g. 16,128,128 "
                                             "(--param block_shape=VALUE; default: [pipeline] in configs/tierflow.def.toml)") from None
        shard = overrides.pop("shard_shape", config.pipeline.shard_shape)
        if shard is not None:
            try:
                shard = parse_block_shape(shard, key="shard_shape", ndim=3)
            except InvalidParameterError as exc:
                raise InvalidParameterError(f"pipeline parameter shard_shape={shard!r}: {exc.message}",
                                            hint="shard_shape must be 3 positive integers z,y,x, e.g. 16,256,256 "
                                                 "(--param shard_shape=VALUE or [pipeline] shard_shape)") from None
        site = {k: v for k, v in config.pipeline.model_dump(exclude_none=True).items() if k not in _NOT_PARAMS}
        values = resolve_values(spec, overrides, site)
        return cls(values=values, block_shape=(int(shape[0]), int(shape[1]), int(shape[2])), spec_digest=spec.digest,
                   shard_shape=None if shard is None else (int(shard[0]), int(shard[1]), int(shard[2])))
