"""CLI: ``tierflow results RUN``: the objects of a run (view ``pipeline_objects``) as a table
preview, CSV or Parquet, one row per object with its track id and every channel's intensities."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tierflow.flows.cli._app import console, print_json

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["objects_frame", "register"]

FORMATS = ("table", "csv", "parquet")
_PIVOTED = re.compile(r"^c\d+_mean$")
_TEXT = ("dataset", "sample")
_PREVIEW = ("sample", "time_point", "label", "track_id", "voxel_count", "centroid_z", "centroid_y", "centroid_x")
_HEADERS = {"time_point": "t", "track_id": "track", "voxel_count": "voxels", "centroid_z": "z", "centroid_y": "y", "centroid_x": "x"}


def objects_frame(columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    """The view's rows as a table with one ``<channel>_<stat>`` column per channel and statistic
    (min, max, mean, sum) of every channel, from the ``intensities`` JSON (the view's fixed
    ``c0_mean`` ... ``c7_mean`` columns are the same numbers, for the first eight)."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(columns), dtype=object)  # typed below: [22, None] stays integer
    intensities = frame.pop("intensities") if "intensities" in frame else pd.Series([None] * len(frame))
    frame = frame.drop(columns=[c for c in frame.columns if _PIVOTED.match(c)])
    for column in frame.columns:
        frame[column] = _typed(frame[column])
    channels = sorted({ch for value in intensities if value for ch in value}, key=_natural)
    for channel in channels:
        for stat in ("min", "max", "mean", "sum"):
            frame[f"{channel}_{stat}"] = [float(v[channel][stat]) if v and channel in v else float("nan") for v in intensities]
    return frame


def _typed(values: pd.Series) -> pd.Series:
    """A column with NULLs as a typed one (so Parquet and CSV keep it numeric): integers as
    nullable ``Int64`` (a track id stays 22, not 22.0), other numbers (or only NULLs) as float."""
    import pandas as pd

    if values.dtype != object or values.name in _TEXT:
        return values
    present = values.dropna()
    if len(present) and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return values.astype("Int64")
    return pd.to_numeric(values).astype("float64")


def _natural(name: str) -> tuple[Any, ...]:
    """``c2`` before ``c10``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _format_of(fmt: str | None, output: Path | None) -> str:
    from tierflow.errors import InvalidParameterError

    if fmt is None:
        suffix = output.suffix.lower() if output else ""
        fmt = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}.get(suffix, "table" if output is None else "")
        if not fmt:
            raise InvalidParameterError(f"--output {output}: cannot tell the format from {suffix or 'no suffix'!r}",
                                        hint="name it .csv or .parquet, or give --format csv|parquet")
    if fmt not in FORMATS:
        raise InvalidParameterError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}", hint="e.g. --format csv")
    if fmt == "table" and output is not None:
        raise InvalidParameterError(f"--format table previews on the terminal; it writes no --output {output}",
                                    hint="give --format csv or parquet to write a file")
    if fmt == "parquet" and output is None:
        raise InvalidParameterError("--format parquet writes a file: give --output FILE.parquet", hint="e.g. --output objects.parquet")
    return fmt


def _write(frame: pd.DataFrame, fmt: str, output: Path | None) -> None:
    from tierflow.errors import TierflowError

    if fmt == "csv":
        if output is None:
            frame.to_csv(sys.stdout, index=False)
        else:
            frame.to_csv(output, index=False)
        return
    try:
        import pyarrow  # noqa: F401 - pandas writes Parquet through it
    except ImportError:
        raise TierflowError("--format parquet needs the pyarrow package, which is not installed",
                            hint="pip install pyarrow (or pip install 'tierflow[parquet]'), or use --format csv") from None
    frame.to_parquet(output, index=False)


def _preview(frame: pd.DataFrame, total: int, limit: int) -> None:
    from rich import box
    from rich.table import Table

    means = [c for c in frame.columns if c.endswith("_mean")]
    columns = [c for c in _PREVIEW if c in frame.columns] + means
    headers = [_HEADERS.get(c, c.replace("_", " ")) for c in columns]
    table = Table(*headers, title=f"first {min(limit, total)} of {total} objects", box=box.SIMPLE_HEAD, pad_edge=False)
    for record in frame.head(limit)[columns].itertuples(index=False):
        table.add_row(*(_cell(v) for v in record))
    console.print(table)


def _cell(value: Any) -> str:
    import pandas as pd

    if pd.isna(value):
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def results(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(metavar="RUN", help="A pipeline run id (or a features op run id, or a Prefect flow-run id).")],
    fmt: Annotated[str | None, typer.Option(
        "--format", metavar="FORMAT", help="table (a preview), csv or parquet; default from --output's suffix, "
                                                             "else table.")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="PATH", help="Write to this file (csv without it: to stdout).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, metavar="N", help="Rows in the table preview.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary (rows, columns, SQL, file) instead of the "
                                                         "preview.")] = False,
) -> None:
    """The objects of a run, one row each: sample, time point, label, track id, geometry and
    every channel's min/max/mean/sum. The same rows are in the SQL view pipeline_objects
    (`SELECT * FROM pipeline_objects WHERE pipeline_run = RUN`; `tierflow db psql`)."""
    from tierflow.flows.cli.data import _database, _existing_run
    from tierflow.storage.db.repo import OBJECTS_VIEW, result_scope, view_rows

    fmt = _format_of(fmt, output)
    if as_json and fmt == "csv" and output is None:
        from tierflow.errors import InvalidParameterError

        raise InvalidParameterError("--json with --format csv needs --output FILE (CSV and JSON cannot share stdout)",
                                    hint="e.g. --format csv --output objects.csv --json")
    with _database(ctx).session() as session:
        scope = result_scope(session, int(_existing_run(session, run).id))
        stored = view_rows(session, OBJECTS_VIEW, scope.column, scope.run_id)
    frame = objects_frame(stored.columns, stored.rows)
    if fmt != "table":
        _write(frame, fmt, output)
    summary = {"run": scope.asked, "objects_of_run": scope.run_id, "served_from_run": scope.served_from, "flow": scope.flow_name,
               "rows": len(frame), "view": OBJECTS_VIEW, "sql": scope.sql, "format": fmt,
               "output": str(output) if output else None, "columns": list(frame.columns)}
    if as_json:
        print_json(summary | ({"preview": frame.head(limit).astype(object).where(frame.head(limit).notna(), None).to_dict("records")}
                             if fmt == "table" else {}))
        return
    if fmt == "csv" and output is None:
        return  # stdout is the CSV
    if fmt == "table":
        _preview(frame, len(frame), limit)
    else:
        console.print(f"wrote {len(frame)} objects ({len(frame.columns)} columns) to {output}")
    if scope.served_from is not None:
        console.print(f"run {scope.asked} was served from the cache of run {scope.served_from}: these are that run's objects")
    console.print(f"SQL: {scope.sql}  (tierflow db psql; export with --format csv|parquet --output FILE)")


def register(app: typer.Typer) -> None:
    """Add ``results`` to the top-level ``tierflow`` app."""
    app.command()(results)
