"""The op memo: a cached ``tierflow op`` answered without zarr, SQLAlchemy or Prefect.

When the ledger's full check (:func:`flows.ops.cached.up_to_date`) confirms a request is up to
date, it writes a memo (:func:`storage.db.repo.memos.record_memo`) keyed by the request as
:func:`memo_request` names it: the op, its version, the resolved parameters, the absolute input
(``--with``, ``--mask``) and output paths, the block shape asked for and the whole configuration.
With it goes a digest of cheap stats: every file under each input (relative path, size,
mtime_ns) and the output's ``zarr.json`` (its bytes hold the op key stamp), taken *before* the
check, so a change during the check shows as a different digest later.

The next identical request is answered by :func:`answer` from one query over a raw psycopg2
connection (:mod:`storage.db.repo.quick`), when the digest and the output's ledger state are what
the memo recorded. Anything else (an S3 location, a non-map op, Otsu's threshold, an external
database, no server running, no memo, a changed file) answers None: the full check runs, as
before. Why: importing zarr and SQLAlchemy alone costs more than the budget of a cached op
(issue 15: at most half of ``import prefect``; ``benchmarks/cli.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierflow.configs import TierflowConfig, load_db_config
from tierflow.flows.ops.result import OpResult
from tierflow.flows.runtime.version import code_version
from tierflow.storage.db.repo.quick import answer_from_memo, embedded_connection
from tierflow.tasks.ops.spec import OpSpec

__all__ = ["RACY_SECONDS", "MemoRequest", "answer", "memo_request", "stat_digest"]

RACY_SECONDS = 2.0
"""A memo is written only if every file it digests is older than this: a file rewritten with the
same size within one tick of a coarse file-system clock keeps its mtime, so stats taken that
recently could not tell the rewrite (git's "racy" index entries, solved the same way)."""


@dataclass(frozen=True)
class MemoRequest:
    """An op request as the memo names it, and the local files whose stats it digests."""

    key: str
    op: str
    inputs: tuple[str, ...]
    """Absolute paths of the input, the extra inputs and the mask."""
    output: str
    """Absolute path of the output."""
    run_parameters: dict[str, Any]
    """The run row's parameters, as the full path records them (``block_shape`` from the memo)."""
    params: dict[str, Any]


def memo_request(spec: OpSpec, resolved: dict[str, Any], input: str, output: str, raw_params: dict[str, Any], block_shape: str | None,
                 extras: dict[str, str], mask: str | None, config: TierflowConfig) -> MemoRequest | None:
    """The memo's name for this request, or None when the memo cannot answer it (not a map op,
    Otsu's threshold, or a location on S3)."""
    if spec.kind != "map" or (spec.name == "threshold" and str(resolved.get("value")).lower() == "otsu"):
        return None
    given = [input, output, *extras.values(), *([mask] if mask else [])]
    if any(where.startswith("s3://") for where in given):
        return None
    absolute = {name: str(Path(where).expanduser().resolve()) for name, where in extras.items()}
    inputs = (str(Path(input).expanduser().resolve()), *(absolute[name] for name in sorted(absolute)),
              *([str(Path(mask).expanduser().resolve())] if mask else []))
    target = str(Path(output).expanduser().resolve())
    text = json.dumps({"op": spec.name, "version": spec.version, "params": resolved, "input": inputs[0], "with": absolute,
                       "mask": inputs[-1] if mask else None, "output": target,
                       "block_shape": block_shape.replace(" ", "") if block_shape else list(config.execution.block_shape),
                       "config": hashlib.sha256(config.model_dump_json().encode()).hexdigest()}, sort_keys=True, default=str)
    parameters = {"op": spec.name, "input": input, "output": output, "params": dict(raw_params), "block_shape": None,
                  "inputs": dict(extras), "mask": mask, "up_to_date": True}
    return MemoRequest(hashlib.sha256(text.encode()).hexdigest(), spec.name, inputs, target, parameters, resolved)


def _file_stats(root: str, newest: list[int]) -> list[str] | None:
    """``relative path|size|mtime_ns`` of every file under ``root`` (or of ``root`` itself),
    following symbolic links (each folder once); ``newest[0]`` is raised to the newest mtime
    seen. None if anything cannot be read (a dangling link, a folder that vanished)."""
    try:
        top = os.stat(root)
        if not os.path.isdir(root):
            newest[0] = max(newest[0], top.st_mtime_ns)
            return [f".|{top.st_size}|{top.st_mtime_ns}"]
        lines: list[str] = []
        pending, seen = [root], {(top.st_dev, top.st_ino)}
        while pending:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    stat = entry.stat()  # follows links
                    relative = os.path.relpath(entry.path, root)
                    if entry.is_dir():
                        lines.append(f"{relative}/")
                        if (stat.st_dev, stat.st_ino) not in seen:  # a link back up is walked once
                            seen.add((stat.st_dev, stat.st_ino))
                            pending.append(entry.path)
                        continue
                    newest[0] = max(newest[0], stat.st_mtime_ns)
                    lines.append(f"{relative}|{stat.st_size}|{stat.st_mtime_ns}")
    except OSError:
        return None
    return sorted(lines)


def stat_digest(request: MemoRequest, *, settled: bool = False) -> str | None:
    """A digest of the inputs' file stats and the output's ``zarr.json`` (stats and bytes), or
    None if one of them cannot be read (or, ``settled``: if one changed in the last
    :data:`RACY_SECONDS`, so that a memo is written only from stats that tell every change)."""
    digest, newest = hashlib.sha256(), [0]
    for where in request.inputs:
        stats = _file_stats(where, newest)
        if stats is None:
            return None
        digest.update(f"{where}\n".encode() + "\n".join(stats).encode() + b"\n\n")
    meta = Path(request.output) / "zarr.json"
    try:
        stat = meta.stat()
        newest[0] = max(newest[0], stat.st_mtime_ns)
        digest.update(f"{stat.st_size}|{stat.st_mtime_ns}\n".encode() + meta.read_bytes())
    except OSError:
        return None
    if settled and newest[0] >= time.time_ns() - int(RACY_SECONDS * 1e9):
        return None
    return digest.hexdigest()


def answer(request: MemoRequest, config_dir: str | None) -> dict[str, Any] | None:
    """The ``up_to_date`` result of ``request`` from its memo (its run row recorded), or None
    when the memo does not answer it (then nothing is written)."""
    digest = stat_digest(request)
    if digest is None:
        return None
    db_config = load_db_config(config_dir)
    if db_config.mode != "embedded":
        return None
    connection = embedded_connection(Path(db_config.data_path), db_config.host, db_config.user, db_config.dbname)
    if connection is None:
        return None
    template = OpResult(0, request.op, "", "", 0, 0, request.params, up_to_date=True).to_dict()
    hit = answer_from_memo(connection, request.key, digest, request.run_parameters, template, code_version())
    if hit is None:
        return None
    run_id, memo = hit
    return OpResult(run_id, request.op, memo["op_key"], memo["output_uri"], memo["blocks"], 0, request.params, up_to_date=True).to_dict()
