"""The exception hierarchy of tierflow.

Every error a user can cause derives from :class:`TierflowError`, carries a message that names
the file, key, URI or block at fault, and (where one exists) a hint saying what to do about it.
The CLI prints ``message`` and ``hint`` on one line each; the traceback only with ``--debug``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "TierflowError",
    "ConfigError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "EmbeddedServerError",
    "SchemaOutOfDateError",
    "InvalidNameError",
    "InvalidParameterError",
    "PipelineSpecError",
    "InvalidInputError",
    "TierError",
    "ObjectNotFoundError",
    "ObjectExistsError",
    "IntegrityError",
    "TransferError",
    "KeyClaimedError",
    "SnapshotConflictError",
    "RawLayoutError",
    "InsufficientMemoryError",
    "InsufficientDiskError",
    "InvalidOmeZarrError",
    "BatchFailed",
    "BlockFailuresError",
    "OutputBusyError",
    "OutputPlacementError",
    "MemoryLimitError",
    "SlurmError",
    "PluginError",
    "KernelOutputError",
    "PrefectServerError",
    "MissingExtraError",
]


class TierflowError(Exception):
    """Base class of every error tierflow raises on purpose.

    Parameters
    ----------
    message
        What is wrong, naming the file, key or object at fault.
    hint
        What the user can do to fix it, or ``None``.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nhint: {self.hint}"
        return self.message


class ConfigError(TierflowError):
    """A configuration file or environment variable is missing, malformed or out of bounds."""


class DatabaseError(TierflowError):
    """The results database cannot be used as configured."""


class DatabaseUnavailableError(DatabaseError):
    """The results database cannot be reached (the password is never part of the message)."""


class EmbeddedServerError(DatabaseError):
    """The embedded PostgreSQL server could not be initialised, started or stopped."""


class SchemaOutOfDateError(DatabaseError):
    """The database schema is behind the code's migrations."""


class InvalidNameError(TierflowError, ValueError):
    """A dataset name, snapshot id or object key is unsafe (``..``, ``/``, absolute, control chars)."""


class InvalidParameterError(TierflowError, ValueError):
    """A parameter's value is of the wrong type or out of its range (the message names the key)."""


class PipelineSpecError(InvalidParameterError):
    """A pipeline spec that cannot run: the message names the file, the stage and the key."""


class InvalidInputError(TierflowError):
    """An input file or array cannot be read as it is (damaged, truncated, inconsistent); the
    message names the file, page or chunk at fault."""


class TierError(TierflowError):
    """A storage tier cannot do what was asked (unreachable, misconfigured, refused)."""


class ObjectNotFoundError(TierError, FileNotFoundError):
    """No object at that key on that tier."""


class ObjectExistsError(TierError, FileExistsError):
    """The key exists on a write-once tier: nothing there can be overwritten."""


class IntegrityError(TierError):
    """Bytes read back do not match their recorded sha256."""


class TransferError(TierError):
    """A transfer was cut short (connection reset, truncated body, timeout) after the client's own
    bounded retries; trying again may succeed."""


class KeyClaimedError(TierError):
    """A write-once key is claimed by another (running or killed) multipart upload."""


class SnapshotConflictError(TierflowError):
    """A snapshot id exists on Tier 1 with different content."""


class RawLayoutError(TierflowError):
    """A raw folder does not have tierflow's raw layout; the message shows how it should look."""


class InsufficientMemoryError(TierflowError, MemoryError):
    """A planned run's estimated peak RAM exceeds what is available (raised before it starts)."""


class InsufficientDiskError(TierflowError, OSError):
    """A planned run's estimated output size exceeds the free space on its scratch root."""


class InvalidOmeZarrError(TierflowError, ValueError):
    """OME-Zarr metadata, or the group it describes, breaks the OME-Zarr 0.5 specification."""


class BatchFailed(TierflowError):
    """Some blocks of a batch failed; ``block_ids`` names them; ``transient`` is true when one
    of them failed in a way a retry may cure (see :func:`tierflow.tasks.retry.is_transient`)."""

    def __init__(self, op: str, block_ids: Sequence[str], first_error: str, transient: bool = False) -> None:
        self.op, self.block_ids, self.first_error, self.transient = op, list(block_ids), first_error, bool(transient)
        super().__init__(f"{op}: block(s) {', '.join(self.block_ids)} failed: {first_error}")

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process boundaries (Dask workers)
        return (type(self), (self.op, self.block_ids, self.first_error, self.transient))


class BlockFailuresError(TierflowError):
    """A run ended with failed blocks; ``block_ids`` lists them all."""

    def __init__(self, op: str, run_id: int, block_ids: list[str], first_error: str) -> None:
        self.op, self.block_ids, self.run_id, self.first_error = op, sorted(block_ids), run_id, first_error
        super().__init__(
            f"{op}: {len(self.block_ids)} block(s) failed in run {run_id}: {', '.join(self.block_ids)} ({first_error})",
            hint=f"fix the cause, then `tierflow resume {run_id}` recomputes only these blocks",
        )

    def __reduce__(self) -> tuple[Any, ...]:  # a flow's exception is pickled into its result
        return (type(self), (self.op, self.run_id, self.block_ids, self.first_error))


class OutputBusyError(TierflowError):
    """Another run with another op key is writing the same output right now."""


class OutputPlacementError(TierflowError):
    """An op output that would write into Tier 1 or over one of the op's inputs."""


class MemoryLimitError(TierflowError, MemoryError):
    """RAM in use is above ``[execution].memory_limit_percent``."""


class SlurmError(TierflowError):
    """A SLURM command failed or is missing; the message carries the command and its stderr."""


class PluginError(TierflowError):
    """An op plugin (an entry point of group ``tierflow.ops``) cannot be used: it does not import,
    does not give an op declared with ``tierflow.ops.block_op``, declares it wrongly, or takes a
    name another op has; the message names the distribution, the entry point and the op."""


class KernelOutputError(TierflowError, ValueError):
    """An op's kernel returned something other than an array of its block's shape; the message
    names the op, its plugin and the block."""


class PrefectServerError(TierflowError):
    """The managed local Prefect server could not be started, reached or stopped."""


class MissingExtraError(TierflowError):
    """A feature needs an optional dependency group (an extra) that is not installed, or installed
    at a version it cannot use; the message names the feature and the package, the hint the
    ``pip install 'tierflow[extra]'`` that fixes it."""
