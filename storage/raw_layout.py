"""tierflow's raw layout, and the intake checks that hold a raw folder to it.

A raw folder (``RAW_DIR``) holds one folder per sample; each sample folder holds one volume per
channel and time point, either as a multi-page TIFF stack or as a folder of 2-D slices::

    RAW_DIR/
      <sample>/                                  one folder per sample (letters, digits, . _ -)
        <prefix>_c<channel>_t<time>.tif          a TIFF stack, z-slices as pages (.tiff, .ome.tif too)
        <prefix>_c<channel>_t<time>/             or a folder of 2-D slices (*.tif, name order = z)

Channel and time point are non-negative integers in the name. The tokens ``c<N>`` and ``t<N>``
come in either order, separated by ``_`` or ``-``, in any case, and the prefix is optional:
``embryo1_c0_t12.tif``, ``embryo1-T12-C0.ome.tif`` and ``c1_t3/`` all parse. Hidden entries
(starting with ``.``) and common junk (``Thumbs.db``, ``.DS_Store``, ``desktop.ini``) are ignored.

Three checks, from coarse to fine:

* :func:`diagnose_raw_layout` checks the folder's shape and raises one :class:`RawLayoutError`
  that lists every problem at once, followed by the picture above;
* :func:`classify_raw_files` parses every stack and slice folder and never raises: what it cannot
  use becomes a human-readable warning;
* :func:`discover_tasks` filters the classified volumes by sample, channel and time point and
  says what was requested, what is present and what is skipped, and why.

Only TIFF headers are read (page count and shape), never pixels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile

from storage.errors import InvalidNameError, RawLayoutError, TierflowError
from storage.tiers.names import check_name

__all__ = [
    "RAW_LAYOUT_PICTURE",
    "RawClassification",
    "RawFile",
    "TaskDiscovery",
    "classify_raw_files",
    "diagnose_raw_layout",
    "discover_tasks",
    "parse_volume_name",
    "read_stack_header",
]

RAW_LAYOUT_PICTURE = """\
Expected layout:
  RAW_DIR/
    <sample>/                              one folder per sample (letters, digits, . _ -)
      <prefix>_c<channel>_t<time>.tif      a TIFF stack, z-slices as pages (.tiff, .ome.tif too)
      <prefix>_c<channel>_t<time>/         or a folder of 2-D slices (*.tif, name order = z)
  e.g. RAW_DIR/embryo1/embryo1_c0_t000.tif, RAW_DIR/embryo1/embryo1_c1_t000/z0000.tif"""

EXPECTED_NAME = (
    "expected <prefix>_c<channel>_t<time> with a .tif/.tiff/.ome.tif suffix for a stack or none "
    "for a slice folder (c and t in either order, '_' or '-' between, prefix optional), "
    "e.g. embryo1_c0_t12.tif"
)

_TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif")
_JUNK = frozenset({"thumbs.db", ".ds_store", "desktop.ini"})
_MAX_LISTED = 10
_VOLUME_NAME = re.compile(
    r"^(?:(?P<prefix>.+?)[_-])?"
    r"(?:c(?P<c1>\d+)[_-]t(?P<t1>\d+)|t(?P<t2>\d+)[_-]c(?P<c2>\d+))$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class RawFile:
    """One raw volume: a TIFF stack or a slice folder for one sample, channel and time point."""

    sample: str
    channel: int
    time_point: int
    path: Path
    kind: Literal["stack", "slices"]
    n_files: int


@dataclass(frozen=True)
class RawClassification:
    """The usable volumes of a raw folder (sorted by sample, channel, time point) and warnings."""

    files: list[RawFile]
    warnings: list[str]


def _ignored(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower() in _JUNK


def _entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not _ignored(p))


def _is_tiff(path: Path) -> bool:
    return path.name.lower().endswith(_TIFF_SUFFIXES)


def _explain(exc: InvalidNameError) -> str:
    return f"{exc.message} ({exc.hint})" if exc.hint else exc.message


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    if len(names) > _MAX_LISTED:
        shown += f" and {len(names) - _MAX_LISTED} more"
    return shown


def parse_volume_name(name: str) -> tuple[int, int] | None:
    """Parse ``(channel, time_point)`` from a stack's file name or a slice folder's name.

    Parameters
    ----------
    name
        A file name (``.tif``, ``.tiff``, ``.ome.tif`` suffix is stripped) or a folder name.

    Returns
    -------
    tuple of int or None
        ``(channel, time_point)``, or ``None`` if the name does not follow the raw layout.

    Examples
    --------
    >>> parse_volume_name("embryo1_c0_t12.tif")
    (0, 12)
    >>> parse_volume_name("T3-C1.ome.tif")
    (1, 3)
    >>> parse_volume_name("notes.txt") is None
    True
    """
    stem = name
    for suffix in _TIFF_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    match = _VOLUME_NAME.match(stem)
    if match is None:
        return None
    channel = match.group("c1") or match.group("c2")
    time_point = match.group("t1") or match.group("t2")
    return int(channel), int(time_point)


def diagnose_raw_layout(raw_dir: str | Path) -> list[str]:
    """Check that ``raw_dir`` has the raw layout's shape; list every problem in one error.

    Only the folder shape is checked (per-sample folders, something inside each); the names and
    contents of stacks are :func:`classify_raw_files`'s business.

    Parameters
    ----------
    raw_dir
        The raw folder (``RAW_DIR``).

    Returns
    -------
    list of str
        The sample names, sorted.

    Raises
    ------
    RawLayoutError
        One multi-line message naming every problem found (missing path, a file instead of a
        folder, an empty folder, loose files at the top level, empty sample folders, sample
        names that are not allowed), followed by a picture of the expected layout.

    Examples
    --------
    >>> diagnose_raw_layout("/data/raw/run42")  # doctest: +SKIP
    ['embryo1', 'embryo2']
    """
    raw = Path(raw_dir)
    problems: list[str] = []
    samples: list[str] = []
    if not raw.exists():
        problems.append(f"{raw} does not exist")
    elif not raw.is_dir():
        problems.append(f"{raw} is a file, not a folder")
    else:
        entries = _entries(raw)
        if not entries:
            problems.append(f"{raw} is empty: no sample folders")
        loose = [p.name for p in entries if not p.is_dir()]
        if loose:
            problems.append(
                f"{len(loose)} loose file(s) at the top level, where only per-sample folders "
                f"belong: {_listing(loose)}"
            )
        for folder in (p for p in entries if p.is_dir()):
            try:
                check_name(folder.name, "sample folder name")
            except InvalidNameError as exc:
                problems.append(f"{folder.name}/: {_explain(exc)}")
                continue
            content = _entries(folder)
            if not any(p.is_dir() or _is_tiff(p) for p in content):
                problems.append(
                    f"sample folder {folder.name}/ is empty: no TIFF stacks or slice folders inside"
                )
                continue
            samples.append(folder.name)
    if problems:
        lines = [f"RAW_DIR {raw} does not have tierflow's raw layout ({len(problems)} problem(s)):"]
        lines += [f"  - {problem}" for problem in problems]
        raise RawLayoutError("\n".join(lines + [RAW_LAYOUT_PICTURE]))
    return sorted(samples)


def _tiff_problem(path: Path) -> str | None:
    """Open a TIFF's header only; return why it cannot be used, or ``None``."""
    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) == 0 or not tif.series:
                return "holds no image pages"
            tif.series[0].shape  # noqa: B018 - parses the header, reads no pixels
    except Exception as exc:  # tifffile raises many types for damaged files
        return f"cannot be opened as TIFF ({type(exc).__name__}: {exc})"
    return None


def _classify_sample(raw: Path, folder: Path, found: list[RawFile], warnings: list[str]) -> None:
    content = _entries(folder)
    if not content:
        warnings.append(f"{folder.name}/: sample folder holds no TIFF stacks or slice folders")
    for entry in content:
        rel = entry.relative_to(raw).as_posix()
        parsed = parse_volume_name(entry.name)
        if entry.is_dir():
            if parsed is None:
                warnings.append(f"{rel}/: folder name not parseable; {EXPECTED_NAME}")
                continue
            slices = [p for p in _entries(entry) if p.is_file() and _is_tiff(p)]
            others = [p.name for p in _entries(entry) if not (p.is_file() and _is_tiff(p))]
            if not slices:
                warnings.append(f"{rel}/: slice folder holds no TIFF slices (*.tif); skipped")
                continue
            if others:
                warnings.append(
                    f"{rel}/: slice folder holds non-TIFF entries, ignored: {_listing(others)}"
                )
            problem = _tiff_problem(slices[0])
            if problem:
                warnings.append(f"{rel}/{slices[0].name}: first slice {problem}; folder skipped")
                continue
            found.append(RawFile(folder.name, *parsed, path=entry, kind="slices", n_files=len(slices)))
        elif not _is_tiff(entry):
            warnings.append(f"{rel}: not a TIFF (.tif, .tiff, .ome.tif); ignored")
        elif parsed is None:
            warnings.append(f"{rel}: file name not parseable; {EXPECTED_NAME}")
        elif problem := _tiff_problem(entry):
            warnings.append(f"{rel}: {problem}; skipped")
        else:
            found.append(RawFile(folder.name, *parsed, path=entry, kind="stack", n_files=1))


def classify_raw_files(raw_dir: str | Path) -> RawClassification:
    """Parse every TIFF stack and slice folder under ``raw_dir``; never raise.

    Parameters
    ----------
    raw_dir
        The raw folder (``RAW_DIR``).

    Returns
    -------
    RawClassification
        ``files``: one :class:`RawFile` per usable volume, sorted by (sample, channel,
        time point). ``warnings``: one line per entry that was not used and why (name not
        parseable, not a TIFF, empty or mixed slice folder, unreadable TIFF header, duplicate
        sample/channel/time point, loose file, disallowed sample name, missing ``raw_dir``).
        Of duplicates, the first by sorted path is kept.

    Examples
    --------
    >>> result = classify_raw_files("/data/raw/run42")  # doctest: +SKIP
    >>> [(f.sample, f.channel, f.time_point, f.kind) for f in result.files]  # doctest: +SKIP
    [('embryo1', 0, 0, 'stack'), ('embryo1', 1, 0, 'slices')]
    """
    raw = Path(raw_dir)
    warnings: list[str] = []
    if not raw.is_dir():
        what = "is a file, not a folder" if raw.exists() else "does not exist"
        return RawClassification([], [f"RAW_DIR {raw} {what}; nothing to classify"])
    found: list[RawFile] = []
    for entry in _entries(raw):
        if not entry.is_dir():
            warnings.append(f"{entry.name}: loose file at the top level, not in a sample folder; ignored")
            continue
        try:
            check_name(entry.name, "sample folder name")
        except InvalidNameError as exc:
            warnings.append(f"{entry.name}/: {_explain(exc)}; skipped")
            continue
        _classify_sample(raw, entry, found, warnings)
    kept: dict[tuple[str, int, int], RawFile] = {}
    for item in sorted(found, key=lambda f: f.path.as_posix()):
        key = (item.sample, item.channel, item.time_point)
        if key in kept:
            first = kept[key].path.relative_to(raw).as_posix()
            warnings.append(
                f"{item.path.relative_to(raw).as_posix()}: duplicate of {first} (sample "
                f"{item.sample}, channel {item.channel}, time point {item.time_point}); kept {first}"
            )
            continue
        kept[key] = item
    return RawClassification(sorted(kept.values(), key=lambda f: (f.sample, f.channel, f.time_point)), warnings)


def _zyx(shape: tuple[int, ...], axes: str, what: str) -> tuple[int, ...]:
    dims = tuple(int(n) for n in shape)
    while len(dims) > 3 and dims[0] == 1:
        dims = dims[1:]
    if len(dims) == 2:
        dims = (1, *dims)
    if len(dims) != 3:
        raise RawLayoutError(
            f"{what} has shape {tuple(shape)} (axes {axes!r}); tierflow expects one channel as "
            f"(z, y, x) per file",
            hint="split channels and time points into separate files named _c<N>_t<N>",
        )
    return dims


def read_stack_header(path_or_folder: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """Read a raw volume's (z, y, x) shape and dtype from TIFF headers only.

    Parameters
    ----------
    path_or_folder
        A TIFF stack (z-slices as pages) or a folder of 2-D TIFF slices.

    Returns
    -------
    tuple
        ``((z, y, x), dtype)``: for a stack, its first series' shape (leading length-1 axes
        dropped; a single page counts as z = 1); for a slice folder, the number of slices times
        the first slice's (y, x).

    Raises
    ------
    RawLayoutError
        If the path is missing, holds no TIFFs, cannot be opened as TIFF, or is not one channel
        of 3-D or 2-D data; the message names the file.

    Examples
    --------
    >>> read_stack_header("/data/raw/run42/embryo1/embryo1_c0_t000.tif")  # doctest: +SKIP
    ((120, 2048, 2048), dtype('uint16'))
    """
    path = Path(path_or_folder)
    if not path.exists():
        raise RawLayoutError(f"{path} does not exist")
    if path.is_dir():
        slices = [p for p in _entries(path) if p.is_file() and _is_tiff(p)]
        if not slices:
            raise RawLayoutError(f"slice folder {path} holds no TIFF slices (*.tif)")
        (_, y, x), dtype = read_stack_header(slices[0])
        return (len(slices), y, x), dtype
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise RawLayoutError(f"{path} holds no image series")
            series = tif.series[0]
            shape, axes, dtype = tuple(series.shape), series.axes, np.dtype(series.dtype)
    except RawLayoutError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files
        raise RawLayoutError(f"{path} cannot be opened as TIFF ({type(exc).__name__}: {exc})") from exc
    return _zyx(shape, axes, str(path)), dtype


@dataclass(frozen=True)
class TaskDiscovery:
    """What :func:`discover_tasks` found: tasks to run, requested vs present, skipped and why.

    ``requested`` and ``present`` map ``"samples"``, ``"channels"`` and ``"time_points"`` to
    sorted lists; ``skipped`` holds ``(what, reason)`` pairs such as
    ``("sample s9", "requested but not present in RAW_DIR")``.
    """

    tasks: list[RawFile]
    requested: dict[str, list]
    present: dict[str, list]
    skipped: list[tuple[str, str]]
    warnings: list[str]

    def summary(self) -> str:
        """A short multi-line text: counts requested, present, to run and skipped."""

        def counts(d: dict[str, list]) -> str:
            return ", ".join(f"{len(d[k])} {k.replace('_', ' ')}" for k in _AXES)

        lines = [
            f"requested: {counts(self.requested)}",
            f"present:   {counts(self.present)}",
            f"to run:    {len(self.tasks)} volume(s)",
            f"skipped:   {len(self.skipped)}",
        ]
        lines += [f"  - {what}: {why}" for what, why in self.skipped[:_MAX_LISTED]]
        if len(self.skipped) > _MAX_LISTED:
            lines.append(f"  - and {len(self.skipped) - _MAX_LISTED} more")
        if self.warnings:
            lines.append(f"warnings:  {len(self.warnings)} (see .warnings)")
        return "\n".join(lines)


_AXES = ("samples", "channels", "time_points")


def _requested_ints(values: Iterable[int] | None, what: str) -> list[int] | None:
    if values is None:
        return None
    out = []
    for value in [values] if isinstance(values, int) else values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise TierflowError(f"`{what}` holds {value!r}; give non-negative integers")
        out.append(int(value))
    return sorted(set(out))


def discover_tasks(
    raw_dir: str | Path,
    *,
    samples: Iterable[str] | None = None,
    channels: Iterable[int] | None = None,
    time_points: Iterable[int] | None = None,
) -> TaskDiscovery:
    """Select the raw volumes to process, and say what was skipped and why.

    Parameters
    ----------
    raw_dir
        The raw folder (``RAW_DIR``); classified with :func:`classify_raw_files`, whose
        warnings are passed on. Run :func:`diagnose_raw_layout` first for a hard stop.
    samples, channels, time_points
        What to process; ``None`` means everything present.

    Returns
    -------
    TaskDiscovery
        ``tasks`` sorted by (sample, channel, time point); ``skipped`` lists requested items
        not present (``"sample s9"``, ``"channel 3"``, ``"time point 7"``), requested
        combinations missing from a sample (``"s1 c0 t5"``) and present volumes left out by a
        filter (``"s1 c2 t5"``, ``"channel 2 not requested"``).

    Raises
    ------
    InvalidNameError
        A requested sample name is not an allowed folder name.
    TierflowError
        A requested channel or time point is not a non-negative integer.

    Examples
    --------
    >>> found = discover_tasks("/data/raw/run42", channels=[0])  # doctest: +SKIP
    >>> print(found.summary())  # doctest: +SKIP
    """
    classification = classify_raw_files(raw_dir)
    files = classification.files
    present = {
        "samples": sorted({f.sample for f in files}),
        "channels": sorted({f.channel for f in files}),
        "time_points": sorted({f.time_point for f in files}),
    }
    if isinstance(samples, str):
        samples = [samples]
    wanted: dict[str, list | None] = {
        "samples": None if samples is None else sorted({check_name(s, "requested sample") for s in samples}),
        "channels": _requested_ints(channels, "channels"),
        "time_points": _requested_ints(time_points, "time_points"),
    }
    requested = {k: present[k] if wanted[k] is None else wanted[k] for k in _AXES}
    skipped: list[tuple[str, str]] = []
    for key, label in zip(_AXES, ("sample", "channel", "time point")):
        for value in requested[key]:
            if value not in present[key]:
                skipped.append((f"{label} {value}", "requested but not present in RAW_DIR"))
    have = {(f.sample, f.channel, f.time_point) for f in files}
    for sample in (s for s in requested["samples"] if s in present["samples"]):
        for channel in (c for c in requested["channels"] if c in present["channels"]):
            for time_point in (t for t in requested["time_points"] if t in present["time_points"]):
                if (sample, channel, time_point) not in have:
                    skipped.append((f"{sample} c{channel} t{time_point}", "not present in RAW_DIR"))
    tasks: list[RawFile] = []
    for f in files:
        reasons = [
            f"{label} {value} not requested"
            for key, label, value in zip(_AXES, ("sample", "channel", "time point"), (f.sample, f.channel, f.time_point))
            if value not in requested[key]
        ]
        if reasons:
            skipped.append((f"{f.sample} c{f.channel} t{f.time_point}", "; ".join(reasons)))
        else:
            tasks.append(f)
    return TaskDiscovery(tasks, requested, present, skipped, list(classification.warnings))
