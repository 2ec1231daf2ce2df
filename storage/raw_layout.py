"""tierflow's raw layout, and the intake checks that hold a raw folder to it.

One folder per sample; in it one volume per channel and time point, as a multi-page TIFF stack
or a folder of 2-D slices, or one multi-dimensional file holding them all (see
:data:`RAW_LAYOUT_PICTURE`)::

    RAW_DIR/
      <sample>/                             one folder per sample (letters, digits, . _ -)
        <prefix>_c<channel>_t<time>.tif     a TIFF stack, z as pages (.tiff, .ome.tif too)
        <prefix>_c<channel>_t<time>/        or a folder of 2-D slices (*.tif, name order = z)
        <name>.ome.tif                      or one file with every channel and time point (an
                                            OME-TIFF or ImageJ hyperstack with T and C axes;
                                            several series = positions; .czi/.lif/.nd2 too)
        <name>_p<N>.ome.tif                 or one such file per position N

A file whose name has no ``_c<N>_t<N>`` is multi-dimensional when it is an OME-TIFF, a vendor
file, is named ``_p<N>``, or holds T/C axes or several series (see :mod:`storage.raw_files`);
its volumes are addressed as ``file#series=S&t=T&c=C``.

Channel and time point are non-negative integers; ``c<N>`` and ``t<N>`` come in either order,
separated by ``_`` or ``-``, in any case, the prefix optional (``embryo1_c0_t12.tif``,
``e1-T12-C0.ome.tif``, ``c1_t3/``). Hidden entries (``.*``) and junk (``Thumbs.db``,
``.DS_Store``, ``desktop.ini``) are ignored. From coarse to fine:
:func:`diagnose_raw_layout` raises one :class:`RawLayoutError` listing every shape problem;
:func:`classify_raw_files` parses every volume and turns what it cannot use into warnings;
:func:`discover_tasks` filters by sample, channel and time point and says what it skipped and
why. Only TIFF headers are read, never pixels.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tierflow.storage.errors import InvalidInputError, InvalidNameError, RawLayoutError, TierflowError
from tierflow.storage.raw_files import file_volumes, is_multi_dim_name
from tierflow.storage.tiers.names import check_name
from tierflow.storage.tiff_check import check_tiff

__all__ = [
    "RAW_LAYOUT_PICTURE", "RawClassification", "RawFile", "TaskDiscovery", "classify_raw_files",
    "check_raw_folder", "diagnose_raw_layout", "discover_tasks", "parse_volume_name", "read_stack_header",
]

RAW_LAYOUT_PICTURE = """\
Expected layout:
  RAW_DIR/
    <sample>/                              one folder per sample (letters, digits, . _ -)
      <prefix>_c<channel>_t<time>.tif      a TIFF stack, z-slices as pages (.tiff, .ome.tif too)
      <prefix>_c<channel>_t<time>/         or a folder of 2-D slices (*.tif, name order = z)
      <name>.ome.tif                       or ONE file with every channel and time point (OME-TIFF or
                                           ImageJ hyperstack with T/C axes; several series = positions;
                                           .czi/.lif/.nd2 with the formats extra)
      <name>_p<N>.ome.tif                  or one such file per position N
  e.g. RAW_DIR/embryo1/embryo1_c0_t000.tif, RAW_DIR/embryo1/embryo1_c1_t000/z0000.tif,
       RAW_DIR/embryo2/embryo2.ome.tif, RAW_DIR/plate1/well_p0.ome.tif"""

EXPECTED_NAME = (
    "expected <prefix>_c<channel>_t<time> with a .tif/.tiff/.ome.tif suffix for a stack or none "
    "for a slice folder (c and t in either order, '_' or '-' between, prefix optional), "
    "e.g. embryo1_c0_t12.tif; or a multi-dimensional file (.ome.tif, a _p<N> name, T/C axes "
    "or several series) holding every channel and time point of its sample"
)

_TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif")
_VENDOR_SUFFIXES = (".czi", ".lif", ".nd2")
_JUNK = frozenset({"thumbs.db", ".ds_store", "desktop.ini"})
_MAX_LISTED = 10
_VOLUME_NAME = re.compile(
    r"^(?:(?P<prefix>.+?)[_-])?"
    r"(?:c(?P<c1>\d+)[_-]t(?P<t1>\d+)|t(?P<t2>\d+)[_-]c(?P<c2>\d+))$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class RawFile:
    """One raw volume: a TIFF stack or a slice folder for one sample, channel and time point,
    or (``kind="multi"``) one volume of a multi-dimensional file, picked by ``selector``
    (``"t=1&c=0"``), at ``position`` (None: the sample has one), with its ``shape``, ``dtype``,
    ``voxel_size`` (z, y, x or y, x; None where unknown), ``unit`` and ``channel_name``."""

    sample: str
    channel: int
    time_point: int
    path: Path
    kind: Literal["stack", "slices", "multi"]
    n_files: int
    position: int | None = None
    selector: str = ""
    shape: tuple[int, ...] = ()
    dtype: str = ""
    voxel_size: tuple[float | None, ...] = ()
    unit: str | None = None
    channel_name: str | None = None

    @property
    def label(self) -> str:
        """``"<sample> c<channel> t<time_point>"`` (``"<sample> p<position> c.. t.."``), as used
        in messages."""
        where = self.sample if self.position is None else f"{self.sample} p{self.position}"
        return f"{where} c{self.channel} t{self.time_point}"

    @property
    def key(self) -> tuple[str, int, int, int]:
        """(sample, position (-1: none), channel, time point): one volume of the raw folder."""
        return self.sample, -1 if self.position is None else self.position, self.channel, self.time_point

    @property
    def address(self) -> str:
        """The path a loader opens: ``.../a.ome.tif#t=1&c=0`` for a volume of a file."""
        return f"{self.path}#{self.selector}" if self.selector else str(self.path)


@dataclass(frozen=True)
class RawClassification:
    """The usable volumes of a raw folder (sorted by sample, channel, time point) and warnings."""

    files: list[RawFile]
    warnings: list[str]


def _entries(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if not (p.name.startswith(".") or p.name.lower() in _JUNK)
    )


def _is_tiff(path: Path) -> bool:
    return path.name.lower().endswith(_TIFF_SUFFIXES)


def _is_image(path: Path) -> bool:
    return path.name.lower().endswith((*_TIFF_SUFFIXES, *_VENDOR_SUFFIXES))


def _slices(folder: Path) -> list[Path]:
    return [p for p in _entries(folder) if p.is_file() and _is_tiff(p)]


def _name_problem(name: str) -> str | None:
    try:
        check_name(name, "sample folder name")
    except InvalidNameError as exc:
        return f"{exc.message} ({exc.hint})" if exc.hint else exc.message
    return None


def _listing(names: list[str]) -> str:
    more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return ", ".join(names[:_MAX_LISTED]) + more


def parse_volume_name(name: str) -> tuple[int, int] | None:
    """Parse ``(channel, time_point)`` from a stack's file name or a slice folder's name.

    Parameters
    ----------
    name
        A file name (a ``.tif``, ``.tiff`` or ``.ome.tif`` suffix is dropped) or folder name.

    Returns
    -------
    tuple of int or None
        ``(channel, time_point)``, or ``None`` if the name does not follow the raw layout.

    Examples
    --------
    >>> parse_volume_name("embryo1_c0_t12.tif"), parse_volume_name("T3-C1.ome.tif")
    ((0, 12), (1, 3))
    >>> parse_volume_name("notes.txt") is None
    True
    """
    stem = name
    for suffix in (s for s in _TIFF_SUFFIXES if name.lower().endswith(s)):
        stem = name[: -len(suffix)]
        break
    match = _VOLUME_NAME.match(stem)
    if match is None:
        return None
    return int(match["c1"] or match["c2"]), int(match["t1"] or match["t2"])


def diagnose_raw_layout(raw_dir: str | Path) -> list[str]:
    """Check the shape of ``raw_dir`` (per-sample folders, something in each); list all problems.

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
        One multi-line message naming every problem (missing path, a file, an empty folder,
        loose top-level files, empty sample folders, disallowed sample names), then a picture
        of the expected layout. File names and contents are :func:`classify_raw_files`'s job.

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
    elif not (entries := _entries(raw)):
        problems.append(f"{raw} is empty: no sample folders")
    else:
        loose = [p.name for p in entries if not p.is_dir()]
        if loose:
            problems.append(
                f"{len(loose)} loose file(s) at the top level, where only per-sample folders "
                f"belong: {_listing(loose)}"
            )
        for folder in (p for p in entries if p.is_dir()):
            if problem := _name_problem(folder.name):
                problems.append(f"{folder.name}/: {problem}")
            elif not any(p.is_dir() or _is_image(p) for p in _entries(folder)):
                problems.append(
                    f"sample folder {folder.name}/ is empty: no TIFF stacks or slice folders inside"
                )
            else:
                samples.append(folder.name)
    if problems:
        lines = [f"RAW_DIR {raw} does not have tierflow's raw layout ({len(problems)} problem(s)):"]
        lines += [f"  - {problem}" for problem in problems]
        raise RawLayoutError("\n".join([*lines, RAW_LAYOUT_PICTURE]))
    return sorted(samples)


def check_raw_folder(raw_dir: str | Path) -> list[str]:
    """:func:`diagnose_raw_layout`, then every TIFF stack and slice under the sample folders
    checked whole (headers and page offsets only); returns the sample names.

    Raises
    ------
    RawLayoutError
        If the layout is wrong (see :func:`diagnose_raw_layout`).
    InvalidInputError
        Listing every TIFF that is truncated, damaged or holds pages of different shapes (file
        and page), before anything is copied.
    """
    raw = Path(raw_dir)
    samples = diagnose_raw_layout(raw)
    damaged = []
    for sample in samples:
        for entry in _entries(raw / sample):
            for file in _slices(entry) if entry.is_dir() else [entry] if _is_tiff(entry) else []:
                multi = not entry.is_dir() and parse_volume_name(file.name) is None
                if problem := _tiff_problem(file, every_series=multi):
                    damaged.append(f"{file.relative_to(raw).as_posix()} {problem}")
    if damaged:
        raise InvalidInputError(
            f"{len(damaged)} TIFF file(s) in {raw} cannot be read whole: " + "; ".join(damaged[:10])
            + (f"; and {len(damaged) - 10} more" if len(damaged) > 10 else ""),
            hint="copy or export them again (or move them out of RAW_DIR); nothing was ingested",
        )
    return samples


def _tiff_problem(path: Path, *, every_series: bool = False) -> str | None:
    """Open a TIFF's header only; return why it cannot be used, or ``None``. With
    ``every_series`` (a multi-dimensional file) each of several series is checked."""
    try:
        if not every_series:
            check_tiff(path)
        else:
            import tifffile

            try:
                with tifffile.TiffFile(path) as tif:
                    count = len(tif.series)
            except Exception:  # noqa: BLE001 - check_tiff names the problem
                count = 1
            for index in range(count) if count > 1 else [None]:
                check_tiff(path, index)
    except InvalidInputError as exc:
        return exc.message.removeprefix(f"{path} ").removeprefix(f"{path}: ")
    return None


def _classify_multi(raw: Path, sample: str, entry: Path, warnings: list[str]) -> list[RawFile] | None:
    """The volumes of a file whose name has no ``_c<N>_t<N>``: a multi-dimensional file's, or
    None if it is a plain single volume (its name is then the problem)."""
    rel = entry.relative_to(raw).as_posix()
    try:
        volumes = file_volumes(entry)
    except TierflowError as exc:
        if not is_multi_dim_name(entry.name) and not _is_tiff(entry):
            return None
        message = exc.message.removeprefix(f"{entry} ").removeprefix(f"{entry}: ")
        warnings.append(f"{rel}: {message}" + (f" ({exc.hint})" if exc.hint else "") + "; skipped")
        return []
    single = len(volumes) == 1 and not volumes[0].leading and volumes[0].position is None
    if single and not is_multi_dim_name(entry.name):
        return None
    return [RawFile(sample, v.channel, v.time_point, entry, "multi", 1, position=v.position, selector=v.selector.text,
                    shape=v.shape, dtype=v.dtype, voxel_size=v.voxel_size, unit=v.unit, channel_name=v.channel_name)
            for v in volumes]


def _classify_entry(raw: Path, sample: str, entry: Path, warnings: list[str]) -> list[RawFile]:
    rel = entry.relative_to(raw).as_posix()
    parsed = parse_volume_name(entry.name)
    if not entry.is_dir():
        if parsed is None and _is_image(entry) and (multi := _classify_multi(raw, sample, entry, warnings)) is not None:
            return multi
        if not _is_tiff(entry):
            warnings.append(f"{rel}: not a TIFF (.tif, .tiff, .ome.tif); ignored")
        elif parsed is None:
            warnings.append(f"{rel}: file name not parseable; {EXPECTED_NAME}")
        elif problem := _tiff_problem(entry):
            warnings.append(f"{rel}: {problem}; skipped")
        else:
            return [RawFile(sample, *parsed, path=entry, kind="stack", n_files=1)]
        return []
    if parsed is None:
        warnings.append(f"{rel}/: folder name not parseable; {EXPECTED_NAME}")
        return []
    slices = _slices(entry)
    if not slices:
        warnings.append(f"{rel}/: slice folder holds no TIFF slices (*.tif); skipped")
        return []
    if others := [p.name for p in _entries(entry) if p not in slices]:
        warnings.append(f"{rel}/: slice folder holds non-TIFF entries, ignored: {_listing(others)}")
    if problem := _tiff_problem(slices[0]):
        warnings.append(f"{rel}/{slices[0].name}: first slice {problem}; folder skipped")
        return []
    return [RawFile(sample, *parsed, path=entry, kind="slices", n_files=len(slices))]


def classify_raw_files(raw_dir: str | Path) -> RawClassification:
    """Parse every TIFF stack and slice folder under ``raw_dir``; never raise.

    Parameters
    ----------
    raw_dir
        The raw folder (``RAW_DIR``).

    Returns
    -------
    RawClassification
        ``files``: one :class:`RawFile` per usable volume, sorted by (sample, channel, time
        point). ``warnings``: one line per entry not used, naming it and saying why (name not
        parseable, not a TIFF, empty or mixed slice folder, TIFF header unreadable, duplicate
        sample/channel/time point - the first by sorted path is kept -, loose file,
        disallowed sample name, ``raw_dir`` missing).

    Examples
    --------
    >>> [f.label for f in classify_raw_files("/data/raw/run42").files]  # doctest: +SKIP
    ['embryo1 c0 t0', 'embryo1 c1 t0']
    """
    raw = Path(raw_dir)
    if not raw.is_dir():
        what = "is a file, not a folder" if raw.exists() else "does not exist"
        return RawClassification([], [f"RAW_DIR {raw} {what}; nothing to classify"])
    warnings: list[str] = []
    found: list[RawFile] = []
    for folder in _entries(raw):
        if not folder.is_dir():
            warnings.append(f"{folder.name}: loose file at the top level, not in a sample folder")
        elif problem := _name_problem(folder.name):
            warnings.append(f"{folder.name}/: {problem}; skipped")
        elif not (content := _entries(folder)):
            warnings.append(f"{folder.name}/: sample folder holds no TIFF stacks or slice folders")
        else:
            found += [f for e in content for f in _classify_entry(raw, folder.name, e, warnings)]
    kept: dict[tuple[str, int, int, int], RawFile] = {}
    clashes: dict[tuple[str, str], list[RawFile]] = {}
    for item in sorted(found, key=lambda f: f.path.as_posix()):
        if item.key in kept:
            clashes.setdefault((kept[item.key].path.as_posix(), item.path.as_posix()), []).append(item)
        else:
            kept[item.key] = item
    for (first_path, _), items in clashes.items():
        item, first = items[0], Path(first_path).relative_to(raw).as_posix()
        rel = item.path.relative_to(raw).as_posix()
        if item.kind == "multi" or kept[item.key].kind == "multi":
            where = "" if item.position is None else f" position {item.position},"
            warnings.append(
                f"{rel}: holds {len(items)} volume(s) also in {first} (sample {item.sample},{where} e.g. channel "
                f"{item.channel}, time point {item.time_point}); kept {first}. A multi-dimensional file holds every "
                "channel and time point of its sample: keep one per sample folder, name one file per position "
                "<name>_p<N>.ome.tif, or move the per-channel files out"
            )
        else:
            warnings.append(
                f"{rel}: duplicate of {first} (sample "
                f"{item.sample}, channel {item.channel}, time point {item.time_point}); "
                f"kept {first}"
            )
    return RawClassification([kept[k] for k in sorted(kept)], warnings)


def read_stack_header(path_or_folder: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """Read a raw volume's (z, y, x) shape and dtype from TIFF headers only.

    Parameters
    ----------
    path_or_folder
        A TIFF stack (z-slices as pages) or a folder of 2-D TIFF slices.

    Returns
    -------
    tuple
        ``((z, y, x), dtype)``: a stack's shape (leading length-1 axes dropped; a
        single page is z = 1), or for a slice folder the slice count times the first's (y, x).

    Raises
    ------
    RawLayoutError
        If the path is missing, holds no TIFF, cannot be opened as TIFF, is truncated or
        damaged, holds pages of different shapes (several series), or is not one channel of 3-D
        or 2-D data; the message names the file (and the page).

    Examples
    --------
    >>> read_stack_header("/data/raw/run42/embryo1/embryo1_c0_t000.tif")  # doctest: +SKIP
    ((120, 2048, 2048), dtype('uint16'))
    """
    path = Path(path_or_folder)
    if not path.exists():
        raise RawLayoutError(f"{path} does not exist")
    if path.is_dir():
        if not (slices := _slices(path)):
            raise RawLayoutError(f"slice folder {path} holds no TIFF slices (*.tif)")
        (_, y, x), dtype = read_stack_header(slices[0])
        return (len(slices), y, x), dtype
    try:
        header = check_tiff(path)
    except InvalidInputError as exc:
        raise RawLayoutError(exc.message, hint=exc.hint) from None
    shape, axes, dtype = header.shape, header.axes, header.dtype
    zyx = shape
    while len(zyx) > 3 and zyx[0] == 1:
        zyx = zyx[1:]
    zyx = (1, *zyx) if len(zyx) == 2 else zyx
    if len(zyx) != 3:
        raise RawLayoutError(
            f"{path} has shape {shape} (axes {axes!r}); tierflow expects one channel as (z, y, x)",
            hint="split channels and time points into separate files named _c<N>_t<N>",
        )
    return zyx, np.dtype(dtype)


_AXES = ("samples", "channels", "time_points")
_LABELS = ("sample", "channel", "time point")


@dataclass(frozen=True)
class TaskDiscovery:
    """What :func:`discover_tasks` found: tasks to run, requested vs present, skipped and why.

    ``requested`` and ``present`` map ``"samples"``, ``"channels"``, ``"time_points"`` to sorted
    lists; ``skipped`` holds ``(what, reason)`` pairs.
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
            *(f"  - {what}: {why}" for what, why in self.skipped[:_MAX_LISTED]),
        ]
        if len(self.skipped) > _MAX_LISTED:
            lines.append(f"  - and {len(self.skipped) - _MAX_LISTED} more")
        if self.warnings:
            lines.append(f"warnings:  {len(self.warnings)} (see .warnings)")
        return "\n".join(lines)


def _requested(values: Iterable | None, what: str) -> list | None:
    if values is None:
        return None
    if what == "samples":
        values = [values] if isinstance(values, str) else values
        return sorted({check_name(v, "requested sample") for v in values})
    out = set()
    for value in [values] if isinstance(values, int) else values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise TierflowError(f"`{what}` holds {value!r}; give non-negative integers")
        out.add(int(value))
    return sorted(out)


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
        The raw folder, classified with :func:`classify_raw_files` (its warnings are passed
        on). Call :func:`diagnose_raw_layout` first for a hard stop on a malformed folder.
    samples, channels, time_points
        What to process; ``None`` means everything present.

    Returns
    -------
    TaskDiscovery
        ``tasks`` sorted by (sample, channel, time point). ``skipped``: requested items not
        present (``("sample s9", "requested but not present in RAW_DIR")``), combinations
        missing from a present sample (``("s1 c0 t5", "not present in RAW_DIR")``) and
        present volumes left out (``("s1 c2 t5", "channel 2 not requested")``).

    Raises
    ------
    InvalidNameError
        A requested sample name is not an allowed folder name.
    TierflowError
        A requested channel or time point is not a non-negative integer.

    Examples
    --------
    >>> print(discover_tasks("/data/raw/run42", channels=[0]).summary())  # doctest: +SKIP
    """
    classification = classify_raw_files(raw_dir)
    files = classification.files
    present = {
        axis: sorted({(f.sample, f.channel, f.time_point)[i] for f in files})
        for i, axis in enumerate(_AXES)
    }
    wanted = dict(zip(_AXES, (samples, channels, time_points), strict=False))
    requested = {
        axis: present[axis] if (chosen := _requested(wanted[axis], axis)) is None else chosen
        for axis in _AXES
    }
    skipped = [
        (f"{label} {value}", "requested but not present in RAW_DIR")
        for axis, label in zip(_AXES, _LABELS, strict=False)
        for value in requested[axis]
        if value not in present[axis]
    ]
    have = {(f.sample, f.channel, f.time_point) for f in files}  # at some position
    grid = [[v for v in requested[axis] if v in present[axis]] for axis in _AXES]
    skipped += [
        (f"{s} c{c} t{t}", "not present in RAW_DIR")
        for s, c, t in itertools.product(*grid)
        if (s, c, t) not in have
    ]
    tasks: list[RawFile] = []
    for f in files:
        values = (f.sample, f.channel, f.time_point)
        reasons = [
            f"{label} {value} not requested"
            for axis, label, value in zip(_AXES, _LABELS, values, strict=False)
            if value not in requested[axis]
        ]
        if reasons:
            skipped.append((f.label, "; ".join(reasons)))
        else:
            tasks.append(f)
    return TaskDiscovery(tasks, requested, present, skipped, list(classification.warnings))
