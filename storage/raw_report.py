"""What a raw folder holds, for people and for the snapshot manifest.

:func:`volume_records` turns a classified raw folder into the per-file volume lists ingest
writes into ``manifest.json`` (:class:`~storage.snapshots.VolumeRecord`); :func:`describe_raw_folder`
says per sample which channels (with names), time points, positions, shapes and voxel sizes were
found, and every problem with the file and what to do (``tierflow check-raw``).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from tierflow.storage.errors import TierflowError
from tierflow.storage.raw_layout import RawClassification, RawFile, classify_raw_files, diagnose_raw_layout
from tierflow.storage.snapshots import VolumeRecord
from tierflow.storage.volumes import open_volume

__all__ = ["describe_raw_folder", "raw_summary", "volume_records"]


def _complete(item: RawFile) -> RawFile:
    """A stack's shape, dtype and voxel size from its header (a multi-dim file's are known)."""
    if item.kind != "stack" or item.shape:
        return item
    from dataclasses import replace

    from tierflow.storage.image_meta import leading_axes

    volume = open_volume(str(item.path))
    spatial = volume.axes[leading_axes(volume.axes):]
    shape = tuple(int(n) for n in volume.shape[len(volume.shape) - len(spatial):])
    units = {volume.metadata.units.get(a) for a in spatial} - {None}
    names = volume.metadata.channel_names
    return replace(item, shape=shape, dtype=str(volume.dtype), voxel_size=volume.metadata.voxel_size(spatial),
                   unit=units.pop() if len(units) == 1 else None, channel_name=names[0] if len(names) == 1 and names[0] else None)


def volume_records(raw_dir: str | Path, classification: RawClassification | None = None) -> dict[str, tuple[VolumeRecord, ...]]:
    """The volumes inside each raw file, by the file's path relative to ``raw_dir`` (stacks and
    multi-dimensional files; a slice folder's volume spans files and is not listed)."""
    raw = Path(raw_dir)
    found = classification or classify_raw_files(raw)
    records: dict[str, list[VolumeRecord]] = defaultdict(list)
    for item in found.files:
        if item.kind == "slices":
            continue
        item = _complete(item)
        records[item.path.relative_to(raw).as_posix()].append(VolumeRecord(
            sample=item.sample, channel=item.channel, time_point=item.time_point, shape=item.shape, dtype=item.dtype,
            selector=item.selector, position=item.position, voxel_size=item.voxel_size, unit=item.unit,
            channel_name=item.channel_name))
    return {path: tuple(sorted(v, key=lambda r: (r.position or 0, r.time_point, r.channel))) for path, v in records.items()}


def _ranges(values: list[int]) -> str:
    values = sorted(set(values))
    if values and values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}-{values[-1]}"
    return ", ".join(map(str, values))


def raw_summary(raw_dir: str | Path) -> dict[str, Any]:
    """Per sample: channels (index -> name), time points, positions, shapes, dtypes, voxel sizes
    and files; plus the classification's warnings.

    Raises
    ------
    RawLayoutError
        If the folder does not have the raw layout at all (see :func:`diagnose_raw_layout`).
    """
    raw = Path(raw_dir)
    diagnose_raw_layout(raw)
    found = classify_raw_files(raw)
    samples: dict[str, dict[str, Any]] = {}
    for item in found.files:
        try:
            item = _complete(item)
        except TierflowError:
            pass
        entry = samples.setdefault(item.sample, {"channels": {}, "time_points": set(), "positions": set(), "shapes": set(),
                                                 "dtypes": set(), "voxel_sizes": set(), "files": set(), "volumes": 0})
        name = entry["channels"].get(item.channel) or item.channel_name
        entry["channels"][item.channel] = name
        entry["time_points"].add(item.time_point)
        if item.position is not None:
            entry["positions"].add(item.position)
        if item.shape:
            entry["shapes"].add(item.shape)
            entry["dtypes"].add(item.dtype)
        if item.voxel_size and any(v is not None for v in item.voxel_size):
            entry["voxel_sizes"].add((item.voxel_size, item.unit or ""))
        entry["files"].add(item.path.relative_to(raw).as_posix() + ("/" if item.kind == "slices" else ""))
        entry["volumes"] += 1
    out = {sample: {"volumes": e["volumes"], "channels": {str(c): e["channels"][c] for c in sorted(e["channels"])},
                    "time_points": sorted(e["time_points"]), "positions": sorted(e["positions"]),
                    "shapes": [list(s) for s in sorted(e["shapes"])], "dtypes": sorted(e["dtypes"]),
                    "voxel_sizes": [{"size": list(v), "unit": u} for v, u in sorted(e["voxel_sizes"], key=str)],
                    "files": sorted(e["files"])}
           for sample, e in sorted(samples.items())}
    return {"raw_dir": str(raw), "samples": out, "volumes": len(found.files), "warnings": list(found.warnings)}


def describe_raw_folder(raw_dir: str | Path) -> str:
    """:func:`raw_summary` as readable text, one block per sample, then every problem."""
    summary = raw_summary(raw_dir)
    lines = [f"RAW_DIR {summary['raw_dir']}: {len(summary['samples'])} sample(s), {summary['volumes']} volume(s)"]
    for sample, e in summary["samples"].items():
        channels = ", ".join(f"c{c}" + (f" {name!r}" if name else "") for c, name in e["channels"].items())
        lines.append(f"  {sample}: {e['volumes']} volume(s)")
        lines.append(f"    channels:    {channels}")
        lines.append(f"    time points: {_ranges(e['time_points'])} ({len(e['time_points'])})")
        if e["positions"]:
            lines.append(f"    positions:   {_ranges(e['positions'])} ({len(e['positions'])}; run as {sample}_p<N>)")
        shapes = "; ".join(" x ".join(map(str, s)) for s in e["shapes"]) or "?"
        lines.append(f"    shape:       {shapes} ({', '.join(e['dtypes']) or '?'})")
        if e["voxel_sizes"]:
            sizes = "; ".join(" x ".join("?" if v is None else f"{v:g}" for v in vs["size"]) + f" {vs['unit']}".rstrip()
                              for vs in e["voxel_sizes"])
            lines.append(f"    voxel size:  {sizes}")
        else:
            lines.append("    voxel size:  not recorded in the files")
        files = e["files"]
        lines.append(f"    files:       {', '.join(files[:4])}" + (f" and {len(files) - 4} more" if len(files) > 4 else ""))
    if summary["warnings"]:
        lines.append(f"problems ({len(summary['warnings'])}): these entries are not used")
        lines += [f"  - {w}" for w in summary["warnings"]]
    else:
        lines.append("problems: none")
    return "\n".join(lines)
