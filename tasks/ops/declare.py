"""Declaring a block op in another package: :func:`block_op` (public as ``tierflow.ops.block_op``).

A plugin writes a kernel over one block (a NumPy array: the block with its halo) and its
parameters as a plain pydantic model; :func:`block_op` turns them into the :class:`OpSpec` the
rest of tierflow runs, adapting in one place what differs from tierflow's own kernels:

* the plugin's kernel, halo and ``out_dtype`` rules receive the parameters as an instance of its
  model (``p.radius``); tierflow resolves parameters to a dict and the wrappers rebuild the model
  from it, so the block engine is the same for every op;
* the model is validated as tierflow's own :class:`~tierflow.tasks.ops.spec.OpParams` are:
  unknown keys and non-finite numbers are refused (a subclass overriding ``model_config``);
* without ``out_dtype=``, the output dtype is the dtype the kernel returns for a small zero block
  of the input's dtype (2x2x2, or 2x2 if the kernel refuses 3-D), found once per parameters and
  dtype before the output array is created; declare ``out_dtype=`` to skip that probe (a kernel
  that is slow to start, or that needs a GPU).

A wrong declaration raises :class:`~tierflow.errors.PluginError` naming the op; the registry
(:mod:`tierflow.tasks.ops.registry`) adds the distribution and entry point it came from.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from tierflow.errors import PluginError
from tierflow.tasks.ops.spec import OpSpec

__all__ = ["RESOURCE_KEYS", "block_op"]

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B?)$", re.IGNORECASE)
_PROBE_SHAPES = ((2, 2, 2), (2, 2))

RESOURCE_KEYS = {
    "threads": "at most this many batches of the op run at once (threads and dask backends)",
    "gpu": "GPUs per batch: at most this many batches at once locally; on SLURM each worker job asks --gpus=N",
    "memory": "memory per worker, e.g. 8G: requested per SLURM worker job (replaces [slurm].memory_per_job)",
}
"""What ``resources=`` may hold, and what each does."""

HaloRule = Callable[[Any, int], Sequence[int]] | int | Sequence[int] | None
DtypeRule = Callable[[Any, np.dtype], Any] | str | type | np.dtype | None


def block_op(
    *,
    name: str,
    version: str,
    params: type[BaseModel],
    halo: HaloRule = None,
    out_dtype: DtypeRule = None,
    inputs: Sequence[str] = (),
    resources: Mapping[str, Any] | None = None,
    summary: str | None = None,
    makes_labels: bool = False,
) -> Callable[[Callable[..., np.ndarray]], OpSpec]:
    """Declare ``kernel(block, params, **extra_blocks) -> block`` as a map op called ``name``.

    Parameters
    ----------
    name
        The op's name (``tierflow op NAME``): lower case letters, digits, ``-`` and ``_``.
    version
        Part of the cache key: change it when what the op computes changes.
    params
        A pydantic model of the parameters (types, defaults, bounds, ``description`` as help).
    halo
        Voxels of context each block needs per axis: ``halo(params, ndim) -> tuple``, an int
        (the same on every axis) or a tuple; default none.
    out_dtype
        The output's dtype: a dtype, or ``out_dtype(params, input_dtype)``; default the dtype the
        kernel returns (probed on a small zero block, see the module docstring).
    inputs
        Names of extra input arrays (``--with NAME=PATH``), given to the kernel as keyword
        arguments cut to the same block.
    resources
        ``{"threads": N, "gpu": N, "memory": "8G"}`` (see :data:`RESOURCE_KEYS`).
    summary
        One line for ``tierflow ops list``; default the first line of the kernel's docstring.
    makes_labels
        The output is a label image.

    Returns
    -------
    A decorator whose result is the op's :class:`OpSpec` (point an entry point of group
    ``tierflow.ops`` at it).

    Raises
    ------
    PluginError
        For a declaration tierflow cannot run, naming the op and what is wrong.
    """
    label = name if isinstance(name, str) else repr(name)
    if not isinstance(name, str) or not _NAME.match(name):
        raise PluginError(f"op {label}: the name must be lower case letters, digits, '-' or '_' (starting with a letter)")
    if not isinstance(version, str) or not version.strip():
        raise PluginError(f"op {name}: version must be non-empty text such as \"1\", not {version!r}")
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        raise PluginError(f"op {name}: params must be a pydantic model class (a BaseModel subclass), not {params!r}")
    if isinstance(inputs, str) or not all(isinstance(i, str) and i.isidentifier() for i in inputs):
        raise PluginError(f"op {name}: inputs must be a tuple of names (keyword arguments of the kernel), not {inputs!r}")
    checked_resources = _resources(name, resources or {})
    model = _strict(params)
    halo_rule = _halo_rule(name, model, halo)
    extra_inputs = tuple(inputs)

    def declare(kernel: Callable[..., np.ndarray]) -> OpSpec:
        if not callable(kernel):
            raise PluginError(f"op {name}: @block_op decorates the kernel function, not {kernel!r}")
        missing = [i for i in extra_inputs if not _accepts_keyword(kernel, i)]
        if missing:
            raise PluginError(f"op {name}: its kernel takes no keyword argument(s) {missing} for its inputs")

        def run(block: np.ndarray, values: Mapping[str, Any], **extras: np.ndarray) -> np.ndarray:
            return kernel(block, model.model_validate(dict(values)), **extras)

        run.__name__ = getattr(kernel, "__name__", name)
        run.__doc__ = kernel.__doc__
        doc = (summary if summary is not None else (inspect.getdoc(kernel) or "").strip().split("\n")[0]).strip()
        return OpSpec(name, version, "map", model, doc or f"{name} (its kernel has no docstring)", kernel=run, halo=halo_rule,
                      out_dtype=_dtype_rule(name, model, out_dtype, kernel, extra_inputs), inputs=extra_inputs,
                      makes_labels=bool(makes_labels), resources=checked_resources)

    return declare


def _strict(model: type[BaseModel]) -> type[BaseModel]:
    """``model`` refusing unknown keys and non-finite numbers (a subclass of it, same name)."""
    config = model.model_config
    if config.get("extra") == "forbid" and config.get("allow_inf_nan") is False:
        return model
    namespace = {"__module__": model.__module__, "__qualname__": model.__qualname__,
                 "model_config": ConfigDict(extra="forbid", allow_inf_nan=False)}
    return type(model.__name__, (model,), namespace)


def _accepts_keyword(function: Callable[..., Any], keyword: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: take it on trust
        return True
    return any(p.kind is p.VAR_KEYWORD or (p.name == keyword and p.kind is not p.POSITIONAL_ONLY) for p in parameters)


def _resources(name: str, resources: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(resources, Mapping):
        raise PluginError(f"op {name}: resources must be a dict such as {{\"gpu\": 1, \"memory\": \"8G\"}}, not {resources!r}")
    unknown = sorted(set(resources) - set(RESOURCE_KEYS))
    if unknown:
        raise PluginError(f"op {name}: unknown resource(s) {unknown}; tierflow knows {sorted(RESOURCE_KEYS)}")
    for key in ("threads", "gpu"):
        value = resources.get(key)
        low = 1 if key == "threads" else 0
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise PluginError(f"op {name}: resources[{key!r}] must be an integer >= {low}, not {value!r}")
    memory = resources.get("memory")
    if memory is not None and not (isinstance(memory, str) and _MEMORY.match(memory.strip())):
        raise PluginError(f"op {name}: resources['memory'] must be a size such as \"8G\" or \"512MB\", not {memory!r}")
    return dict(resources)


def _halo_rule(name: str, model: type[BaseModel], halo: HaloRule) -> Callable[[Mapping[str, Any], int], tuple[int, ...]]:
    if halo is not None and not callable(halo) and not isinstance(halo, (int, Sequence)):
        raise PluginError(f"op {name}: halo must be a function (params, ndim) -> tuple, an int or a tuple, not {halo!r}")

    def rule(values: Mapping[str, Any], ndim: int) -> tuple[int, ...]:
        if halo is None:
            result: Any = (0,) * ndim
        elif callable(halo):
            result = halo(model.model_validate(dict(values)), ndim)
        elif isinstance(halo, int):
            result = (halo,) * ndim
        else:
            result = halo
        try:
            widths = tuple(int(h) for h in result)
        except (TypeError, ValueError):
            widths = ()
        if len(widths) != ndim or any(h < 0 or h != w for h, w in zip(widths, result, strict=False)):
            raise PluginError(f"op {name}: its halo rule gave {result!r} for {ndim}-D, expected {ndim} integers >= 0")
        return widths

    return rule


def _dtype_rule(name: str, model: type[BaseModel], out_dtype: DtypeRule, kernel: Callable[..., np.ndarray],
                inputs: tuple[str, ...]) -> Callable[[Mapping[str, Any], np.dtype], np.dtype]:
    if (out_dtype is not None and not callable(out_dtype)) or isinstance(out_dtype, type):
        try:
            fixed = np.dtype(out_dtype)  # type: ignore[arg-type]
        except TypeError:
            raise PluginError(f"op {name}: out_dtype {out_dtype!r} is not a numpy dtype") from None
        return lambda values, dtype: fixed
    probed: dict[tuple[str, str], np.dtype] = {}

    def rule(values: Mapping[str, Any], dtype: np.dtype) -> np.dtype:
        params = model.model_validate(dict(values))
        if out_dtype is not None:
            return np.dtype(out_dtype(params, np.dtype(dtype)))  # type: ignore[operator]
        key = (params.model_dump_json(), np.dtype(dtype).str)
        if key not in probed:
            probed[key] = _probe(name, kernel, params, np.dtype(dtype), inputs)
        return probed[key]

    return rule


def _probe(name: str, kernel: Callable[..., np.ndarray], params: BaseModel, dtype: np.dtype, inputs: tuple[str, ...]) -> np.dtype:
    """The dtype ``kernel`` returns for a small zero block of ``dtype``."""
    problem: BaseException | None = None
    for shape in _PROBE_SHAPES:
        try:
            result = kernel(np.zeros(shape, dtype), params, **{i: np.zeros(shape, dtype) for i in inputs})
            return np.asarray(result).dtype
        except Exception as exc:  # noqa: BLE001 - try the next shape, then report
            problem = exc
    raise PluginError(f"op {name}: could not learn its output dtype by running its kernel on a small zero block of {dtype} "
                      f"({type(problem).__name__}: {problem})",
                      hint=f"declare it: @block_op(name={name!r}, ..., out_dtype=\"float32\") (or the dtype it returns)")
