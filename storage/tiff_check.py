"""Checking a TIFF before reading it: one stack of equal pages, every page whole.

Read from the headers only (the IFDs and the page offsets against the file size), so a
damaged file is refused in a fraction of a second, before any flow starts, instead of failing
with an ``IndexError`` half-way through a run, and a file whose pages differ in shape is refused
instead of being silently cut to its first series.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tierflow.storage.errors import InvalidInputError

__all__ = ["TiffHeader", "check_tiff", "read_tiff_page"]

_DAMAGED_HINT = "the file is damaged or was not copied completely: copy or export it again from the instrument"


@dataclass(frozen=True)
class TiffHeader:
    """What :func:`check_tiff` found: the stack's shape, axes, dtype and page count."""

    shape: tuple[int, ...]
    axes: str
    dtype: np.dtype
    pages: int


class _Collect(logging.Handler):
    """Keeps tifffile's warnings (``invalid page offset``...) logged by this thread."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread, self.messages = threading.get_ident(), []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


@contextmanager
def _tifffile_warnings() -> Iterator[list[str]]:
    logger, handler = logging.getLogger("tifffile"), _Collect()
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def _series_problem(path: Path, tif: object, index: int | None) -> None:
    series = tif.series  # type: ignore[attr-defined]
    if not series or not series[0].shape:
        raise InvalidInputError(f"{path} holds no image pages", hint=_DAMAGED_HINT)
    if index is not None:
        if not 0 <= index < len(series):
            raise InvalidInputError(f"{path} has no series {index}: it holds {len(series)} (0 to {len(series) - 1})",
                                    hint=f"give {path.name}#series=N with N from 0 to {len(series) - 1}")
        return
    if len(series) > 1:
        shapes = "; ".join(f"series {i}: {tuple(s.shape)} ({len(s.pages)} page(s))" for i, s in enumerate(series[:8]))
        raise InvalidInputError(
            f"{path} holds {len(series)} series ({shapes}); "
            "tierflow reads one series at a time",
            hint=f"read one series (position) with {path.name}#series=N (N from 0 to {len(series) - 1}); or save the stack with "
                 "every z-slice the same shape and dtype (crop or pad them), or split it into one file per shape",
        )


def _page_problem(path: Path, tif: object, size: int, warnings: list[str], chosen: int) -> None:
    series = tif.series[chosen]  # type: ignore[attr-defined]
    plane = math.prod(series.keyframe.shape) or 1
    expected = math.prod(series.shape) // plane
    if series.dataoffset is not None and series.dataoffset + series.nbytes > size:  # contiguous data: one extent
        page = max(0, (size - series.dataoffset) // (plane * series.dtype.itemsize))
        raise InvalidInputError(f"{path} is truncated: page {page} of {expected} ends beyond the file's {size} bytes "
                                f"(its data needs {series.dataoffset + series.nbytes})".replace(")", " bytes)"), hint=_DAMAGED_HINT)
    for index in range(expected):
        try:
            page = series.pages[index]
        except Exception as exc:  # tifffile raises many types for damaged files
            raise InvalidInputError(f"{path} is damaged: page {index} of {expected} cannot be read ({type(exc).__name__}: {exc})",
                                    hint=_DAMAGED_HINT) from None
        if page is None or any(o + n > size for o, n in zip(page.dataoffsets, page.databytecounts, strict=False)):
            raise InvalidInputError(f"{path} is truncated: the data of page {index} of {expected} lies beyond the file's "
                                    f"{size} bytes", hint=_DAMAGED_HINT)
    if warnings and chosen == 0:  # the IFD chain breaks off: the pages after the last readable one are lost
        raise InvalidInputError(f"{path} is damaged: page {len(tif.pages)} cannot be read ({warnings[0]}); "  # type: ignore[attr-defined]
                                f"pages 0 to {len(tif.pages) - 1} are readable", hint=_DAMAGED_HINT)  # type: ignore[attr-defined]


def check_tiff(path: str | os.PathLike[str], series: int | None = None) -> TiffHeader:
    """Check a TIFF stack from its headers; return its only series' header (or series ``series``).

    Parameters
    ----------
    path
        A TIFF file.
    series
        The series (OME-TIFF image, position) to check; default: the file must hold one.

    Returns
    -------
    TiffHeader
        Shape, axes, dtype and page count of the stack.

    Raises
    ------
    InvalidInputError
        If the file cannot be opened as TIFF, holds no pages, holds several series (pages that
        differ in shape), or is truncated or damaged (a page's IFD or data beyond the end of the
        file); the message names the file and the page, the hint what to do.
    """
    import tifffile

    file = Path(path)
    size = file.stat().st_size
    with _tifffile_warnings() as warnings:
        try:
            with tifffile.TiffFile(file) as tif:
                len(tif.pages)  # reads every IFD: a broken chain is logged as a warning
                _series_problem(file, tif, series)
                _page_problem(file, tif, size, [w for w in warnings if "offset" in w or "corrupt" in w], series or 0)
                chosen = tif.series[series or 0]
                return TiffHeader(tuple(int(n) for n in chosen.shape), chosen.axes, np.dtype(chosen.dtype), len(chosen.pages))
        except InvalidInputError:
            raise
        except Exception as exc:  # tifffile raises many types for damaged files
            raise InvalidInputError(f"{file} cannot be opened as TIFF ({type(exc).__name__}: {exc})", hint=_DAMAGED_HINT) from None


def read_tiff_page(tif: object, path: Path, index: int, series: int = 0) -> np.ndarray:
    """Page ``index`` of an open TIFF's series ``series``, or an error naming the file and page."""
    try:
        return np.asarray(tif.series[series].pages[index].asarray())  # type: ignore[attr-defined]
    except Exception as exc:  # tifffile raises many types for damaged files
        raise InvalidInputError(f"{path}: page {index} cannot be read ({type(exc).__name__}: {exc})", hint=_DAMAGED_HINT) from None
