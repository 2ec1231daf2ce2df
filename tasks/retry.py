"""Which failures are worth a retry: transient ones only.

Prefect retries a task whatever it raised; a block that fails on bad input, a wrong parameter or a
dtype it cannot take fails the same way every time, so retrying it only delays the report.
:func:`is_transient` tells the two apart (one classification, used where block errors are caught
and by Prefect's retry condition); :func:`retry_transient` is the ``retry_condition_fn`` of every
retrying task.

Transient: the network or a server hiccupped (``ConnectionError``, ``TimeoutError``, other
``OSError`` but a missing/existing file, a permission or a full disk; botocore transport errors
and 5xx/throttling answers; obstore's ``GenericError``; SQLAlchemy's ``OperationalError``;
tierflow's :class:`TransferError` and :class:`DatabaseUnavailableError`); a :class:`BatchFailed`
when its ``transient`` says one of its blocks failed so. Everything else (tierflow's other errors,
``ValueError``, ``TypeError``, ``KeyError``, numpy's dtype errors, an unknown exception) is taken
as deterministic and not retried.
"""

from __future__ import annotations

import errno
from typing import Any

from tierflow.errors import BatchFailed, DatabaseUnavailableError, TierflowError, TransferError

__all__ = ["is_transient", "retry_transient"]

_DETERMINISTIC_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
_DETERMINISTIC_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG, errno.EFBIG, errno.EINVAL})
_S3_RETRY_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                             "ServiceUnavailable", "InternalError", "503", "500"})


def _botocore_transient(exc: BaseException) -> bool:
    try:
        from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError, HTTPClientError, IncompleteReadError
    except ImportError:  # pragma: no cover - botocore is a dependency
        return False
    if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError)):
        return True
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return status >= 500 or str(error.get("Code", "")) in _S3_RETRY_CODES
    return False


def _library_transient(exc: BaseException) -> bool:
    """Network and database errors of the libraries tierflow talks through."""
    from sqlalchemy.exc import DisconnectionError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    if isinstance(exc, (OperationalError, DisconnectionError, PoolTimeoutError)):
        return True
    if type(exc).__module__.startswith("obstore") and type(exc).__name__ == "GenericError":
        return True  # obstore's network, timeout and 5xx errors (after its own retries)
    return _botocore_transient(exc)


def is_transient(exc: BaseException) -> bool:
    """True when trying ``exc``'s work again may succeed (see the module docstring).

    Parameters
    ----------
    exc
        What a block or a task raised.

    Returns
    -------
    bool
        ``True`` for a transient failure, ``False`` for a deterministic one.

    Examples
    --------
    >>> is_transient(ConnectionResetError()), is_transient(ValueError("bad sigma"))
    (True, False)
    """
    if isinstance(exc, BatchFailed):
        return exc.transient
    if isinstance(exc, TierflowError):
        return isinstance(exc, (TransferError, DatabaseUnavailableError))
    if isinstance(exc, (ConnectionError, TimeoutError, InterruptedError, BlockingIOError)):
        return True
    if isinstance(exc, _DETERMINISTIC_OS_ERRORS):
        return False
    if isinstance(exc, OSError):
        return exc.errno not in _DETERMINISTIC_ERRNOS
    if _library_transient(exc):
        return True
    cause = exc.__cause__  # a generic wrapper (``raise RuntimeError(...) from OSError``) counts as its cause
    return cause is not None and not isinstance(exc, (ValueError, TypeError, LookupError)) and is_transient(cause)


def _exception_of(state: Any) -> BaseException | None:
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return data
    result = getattr(data, "result", None)  # a persisted result record
    return result if isinstance(result, BaseException) else None


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect 3's ``retry_condition_fn``: retry the failed ``task_run`` only when its
    exception is transient (:func:`is_transient`).

    Parameters
    ----------
    task
        The Prefect task.
    task_run
        Its failed run.
    state
        The ``Failed`` state; its ``data`` holds the exception.

    Returns
    -------
    bool
        Whether Prefect should retry (its ``retries`` still bound the number of attempts).

    Examples
    --------
    >>> from prefect import task
    >>> @task(retries=2, retry_condition_fn=retry_transient)
    ... def copy_batch(keys: list[str]) -> int: ...
    """
    exc = _exception_of(state)
    transient = exc is not None and is_transient(exc)
    if exc is not None and not transient:
        try:
            from prefect import get_run_logger

            get_run_logger().info("not retried: %s is deterministic (retrying gives the same failure)", type(exc).__name__)
        except Exception:  # noqa: BLE001 - outside a run context the decision stands without a log line
            pass
    return transient
