"""Where an operation may write: never into Tier 1, never over what it reads.

Tier 1 is write-once: only ``ingest`` (new snapshots) and ``promote`` (verified copies) put
objects there, through the write-once tier interface. An op's output is opened as an ordinary
zarr store, so an ``-o`` that resolved into Tier 1 would overwrite promoted results or add files
to a committed snapshot; and an output equal to (or inside, or holding) one of the op's inputs
would overwrite the data the op is reading. Both are refused here, by resolved path (symlinks
followed) or by bucket and key, before any work starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tierflow.configs import TierflowConfig
from tierflow.storage.arrays import LABEL_STATE_SUFFIX
from tierflow.errors import OutputPlacementError
from tierflow.storage.tiers import parse_s3_uri

__all__ = ["HELPER_SUFFIXES", "OutputPlacementError", "Place", "check_output_placement", "op_reads", "place_of"]

HELPER_SUFFIXES = (LABEL_STATE_SUFFIX,)
"""Folders an op writes beside its output (label merge state): checked like the output."""


@dataclass(frozen=True)
class Place:
    """A location reduced to what decides overlap: a resolved local path, or a bucket and key."""

    scheme: str
    """``file`` or ``s3``."""
    bucket: str
    parts: tuple[str, ...]

    def contains(self, other: Place) -> bool:
        """True when ``other`` is this place or lies inside it."""
        return (self.scheme, self.bucket) == (other.scheme, other.bucket) and other.parts[: len(self.parts)] == self.parts

    def overlaps(self, other: Place) -> bool:
        """True when one of the two places is, or lies inside, the other."""
        return self.contains(other) or other.contains(self)

    def __str__(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{'/'.join(self.parts)}"
        return str(PurePosixPath("/", *self.parts))


def place_of(where: str) -> Place:
    """The :class:`Place` of a local path (resolved, symlinks followed) or an ``s3://`` URI."""
    if where.startswith("s3://"):
        bucket, key = parse_s3_uri(where)
        return Place("s3", bucket, tuple(part for part in key.split("/") if part))
    if where.startswith("file://"):
        where = where[len("file://"):]
    return Place("file", "", Path(where).expanduser().resolve().parts[1:])


def op_reads(input: str, inputs: Mapping[str, str] | None = None, mask: str | None = None) -> dict[str, str | None]:
    """Every location an op reads, by the option the user gave it with (``-i``, ``--with NAME``,
    ``--mask``)."""
    return {"-i": input, **{f"--with {name}": where for name, where in (inputs or {}).items()}, "--mask": mask}


def check_output_placement(config: TierflowConfig, output: str, inputs: Mapping[str, str | None]) -> None:
    """Refuse an op output that would write into Tier 1 or over one of its inputs.

    Parameters
    ----------
    config
        The configuration (for Tier 1's root).
    output
        The op's output, a local path or an ``s3://`` URI.
    inputs
        Every input the op reads, by what the user called it (``-i``, ``--with markers``,
        ``--mask``); ``None`` values are skipped.

    Raises
    ------
    OutputPlacementError
        Naming the output, what it collides with, and what to do.
    """
    target = place_of(output)
    source_root = place_of(config.tier_root("source"))
    written = [target, *(Place(target.scheme, target.bucket, (*target.parts[:-1], target.parts[-1] + suffix))
                         for suffix in HELPER_SUFFIXES if target.parts)]
    for place in written:
        if source_root.overlaps(place):
            where = "inside" if source_root.contains(place) else "around"
            shown = output if str(place) == output.rstrip("/") else f"{output} ({place})"
            raise OutputPlacementError(
                f"output {shown} lies {where} Tier 1 ({source_root}), which is write-once: an op never writes there",
                hint="write the op's output to scratch or another folder; to publish a result, `tierflow promote` it",
            )
    for name, where in inputs.items():
        if where is None:
            continue
        read = place_of(where)
        if target.overlaps(read):
            relation = "is" if target == read else ("is inside" if read.contains(target) else "holds")
            raise OutputPlacementError(
                f"output {output} {relation} the input {name} ({where}): the op would overwrite what it reads",
                hint="choose an output path outside every input (-i, --with, --mask)",
            )
