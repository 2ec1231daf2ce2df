"""The one registry of operations: every part of tierflow that needs to know what ops exist, or
what one of them takes, asks here (the CLI's op list, help, hints and progress totals, the ``op``
flow's dispatch, the pipeline).

Lookups are cheap: the catalogue imports numpy and pydantic, never Prefect or the heavy kernels.
"""

from __future__ import annotations

from functools import cache

from tierflow.errors import InvalidParameterError
from tierflow.tasks.ops.spec import OpSpec

__all__ = ["all_ops", "get_op", "op_names"]


@cache
def _ops() -> dict[str, OpSpec]:
    from tierflow.tasks.ops.catalog import BUILTIN_OPS

    return {spec.name: spec for spec in BUILTIN_OPS}


def all_ops() -> list[OpSpec]:
    """Every registered op, in declaration order."""
    return list(_ops().values())


def op_names() -> list[str]:
    """The names of every registered op, in declaration order."""
    return list(_ops())


def get_op(name: str) -> OpSpec:
    """The op called ``name``.

    Raises
    ------
    InvalidParameterError
        (a ``ValueError``) naming the op asked for and listing the known ones.
    """
    try:
        return _ops()[name]
    except KeyError:
        raise InvalidParameterError(f"no operation {name!r}", hint=f"choose one of {', '.join(op_names())} "
                                    "(`tierflow ops list` describes them)") from None
