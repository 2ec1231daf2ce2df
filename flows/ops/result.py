"""What an op run returns: :class:`OpResult`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["OpResult", "ResultMapping"]


class ResultMapping(Mapping[str, Any]):
    """A typed result that also reads as the dict it replaced: ``result["key"]``, ``.get``,
    ``in``, ``keys()`` and iteration over :meth:`to_dict` (what ``--json`` prints)."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass(frozen=True)
class OpResult(ResultMapping):
    """One op run's outcome: its run, key, output and block counts (plus what its kind adds in
    ``details``: a label's object count, a pyramid's levels, a feature table's URI...).

    Also readable as a mapping (``result["computed"]``, ``result.get("objects")``), flattened
    as :meth:`to_dict` gives it, so code and notebooks written against the dict results of
    earlier versions keep working; ``tierflow op --json`` prints :meth:`to_dict`.
    """

    run_id: int
    op: str
    op_key: str
    output: str
    """URI of the output (``file://`` or ``s3://``)."""
    blocks: int
    computed: int
    """Blocks computed by this run (the rest were done already, per the ledger)."""
    params: Mapping[str, Any] = field(default_factory=dict)
    batches: int = 0
    task_seconds: float = 0.0
    workers: int | None = None
    up_to_date: bool = False
    """Answered from the ledger alone: nothing was left to compute, no flow run started."""
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        """Blocks the ledger already had done."""
        return self.blocks - self.computed

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values, ``details`` flattened in."""
        data = asdict(self)
        details = data.pop("details")
        data["params"] = dict(self.params)
        data["skipped"] = self.skipped
        if not self.up_to_date:
            data.pop("up_to_date")
        return {**data, **details}


_COUNTED = ("objects", "levels", "stored")
"""Details told as counts (``340 objects``) in :func:`summary_sentence`."""
_QUIET = {"blocks", "computed", "params", "task_seconds", "skipped", "batches", "shapes", "channels", "table", "voxel_size_from"}


def summary_sentence(what: str, summary: Mapping[str, Any]) -> str:
    """An op run's summary as a log sentence, not a dict: ``label a.zarr→b.zarr: 12 of 12
    block(s) computed, 0 already done; 340 objects, connectivity 26``."""
    blocks, computed = int(summary.get("blocks", 0)), int(summary.get("computed", 0))
    head = f"{what}: {computed} of {blocks} block(s) computed, {blocks - computed} already done"
    counts = [f"{summary[k]} {k}" for k in _COUNTED if summary.get(k) is not None]
    others = [f"{k.replace('_', ' ')} {v}" for k, v in summary.items()
              if k not in _QUIET and k not in _COUNTED and v is not None and isinstance(v, str | int | float)]
    details = ", ".join(counts + others)
    return f"{head}; {details}" if details else head
