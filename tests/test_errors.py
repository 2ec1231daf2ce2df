"""The error hierarchy: every exception class of tierflow lives in tierflow/errors.py, under
TierflowError; the old import locations still give the same classes; errors that cross process
boundaries survive pickling with their fields."""

from __future__ import annotations

import ast
import builtins
import pickle
from pathlib import Path

import tierflow.errors as errors

REPO_ROOT = Path(__file__).resolve().parents[1]


def _exception_classes_outside_errors() -> list[str]:
    """Classes defined outside tierflow/errors.py whose bases name an exception class."""
    names = (
        set(errors.__all__) | {"Exception", "BaseException"} | {n for n in dir(builtins) if n.endswith(("Error", "Exception", "Warning"))}
    )
    found = []
    for folder in ("flows", "tasks", "storage", "configs", "tierflow"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            if path == REPO_ROOT / "tierflow" / "errors.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef):
                    bases = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in node.bases}
                    if bases & names:
                        found.append(f"{path.relative_to(REPO_ROOT)}::{node.name}")
    return found


def test_every_exception_class_lives_in_errors() -> None:
    outside = _exception_classes_outside_errors()
    # a warning category is no error: PreflightWarning (ResourceWarning) stays with the preflight
    assert outside == ["storage/preflight.py::PreflightWarning"]
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.TierflowError), name


def test_old_import_locations_give_the_same_classes() -> None:
    from tierflow.flows.execution.outputs import OutputBusyError
    from tierflow.flows.execution.placement import OutputPlacementError
    from tierflow.flows.ops.flow import BlockFailuresError
    from tierflow.flows.runtime.memory_guard import MemoryLimitError
    from tierflow.flows.slurm.scheduler import SlurmError
    from tierflow.storage.ome_zarr import InvalidOmeZarrError
    from tierflow.tasks.blockwise import BatchFailed

    assert (OutputBusyError, OutputPlacementError, BlockFailuresError, MemoryLimitError, SlurmError, InvalidOmeZarrError, BatchFailed) == (
        errors.OutputBusyError,
        errors.OutputPlacementError,
        errors.BlockFailuresError,
        errors.MemoryLimitError,
        errors.SlurmError,
        errors.InvalidOmeZarrError,
        errors.BatchFailed,
    )


def test_block_errors_pickle_with_their_fields() -> None:
    batch = pickle.loads(pickle.dumps(errors.BatchFailed("gaussian", ["0_0_1", "0_0_0"], "ValueError: bad")))
    assert (batch.op, batch.block_ids, batch.first_error) == ("gaussian", ["0_0_1", "0_0_0"], "ValueError: bad")
    run = pickle.loads(pickle.dumps(errors.BlockFailuresError("gaussian", 7, ["0_0_1", "0_0_0"], "ValueError: bad")))
    assert (run.op, run.run_id, run.block_ids, run.first_error) == ("gaussian", 7, ["0_0_0", "0_0_1"], "ValueError: bad")
    assert str(run) == str(errors.BlockFailuresError("gaussian", 7, ["0_0_1", "0_0_0"], "ValueError: bad"))


def _raised(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the real exception a library raises
        return exc
    raise AssertionError("nothing raised")


def test_transient_and_deterministic_errors_are_told_apart() -> None:
    import errno

    import numpy as np
    from botocore.exceptions import ClientError, EndpointConnectionError
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    from tierflow.tasks.retry import is_transient

    numpy_dtype_error = _raised(lambda: np.add(np.array(["a"]), np.array([1.5])))  # numpy's own ufunc/dtype error
    db_down = _raised(lambda: create_engine("postgresql+psycopg2://nobody@127.0.0.1:1/none").connect().execute(text("select 1")))
    assert isinstance(db_down, OperationalError)
    slow_down = ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject")
    no_such_bucket = ClientError({"Error": {"Code": "NoSuchBucket"}, "ResponseMetadata": {"HTTPStatusCode": 404}}, "PutObject")
    transient = [
        ConnectionResetError(),
        TimeoutError(),
        OSError(errno.EIO, "I/O error"),
        db_down,
        slow_down,
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        errors.TransferError("cut short"),
        errors.DatabaseUnavailableError("down"),
        errors.BatchFailed("gaussian", ["0.0.0"], "OSError: EIO", True),
    ]
    deterministic = [
        ValueError("sigma"),
        TypeError(),
        KeyError("x"),
        numpy_dtype_error,
        no_such_bucket,
        FileNotFoundError(),
        PermissionError(),
        OSError(errno.ENOSPC, "full"),
        errors.InvalidParameterError("bad"),
        errors.InsufficientDiskError("full"),
        errors.IntegrityError("sha"),
        RuntimeError("kernel"),
        errors.BatchFailed("gaussian", ["0.0.0"], "ValueError: bad"),
    ]
    assert [is_transient(e) for e in transient] == [True] * len(transient)
    assert [is_transient(e) for e in deterministic] == [False] * len(deterministic)


def test_the_retry_condition_reads_the_failed_state_and_batch_failed_keeps_transient() -> None:
    from prefect.states import Failed

    from tierflow.tasks.retry import retry_transient

    flaky = pickle.loads(pickle.dumps(errors.BatchFailed("gaussian", ["0.0.1"], "OSError: EIO", True)))
    assert flaky.transient and flaky.block_ids == ["0.0.1"]
    assert retry_transient(None, None, Failed(data=flaky)) is True
    assert retry_transient(None, None, Failed(data=errors.BatchFailed("gaussian", ["0.0.1"], "ValueError: bad"))) is False
    assert retry_transient(None, None, Failed(data=ValueError("bad"))) is False
