"""SLURM-aware retries of block batches (``[execution].backend = "slurm"``).

A batch whose Dask worker job died takes its task with it: Prefect's own task retries never
run (the engine died too) and Dask would only try the same size of job again. The flow asks
SLURM how that job ended (the batch recorded its job id in the ledger when it started) and:

* OUT_OF_MEMORY: submits the batch again to workers with ``[slurm].oom_memory_factor`` times the
  memory (a second SLURMCluster);
* TIMEOUT: submits it again as two batches of half the size;
* anything else: the batch's blocks fail, listed in the run's error, for ``tierflow resume``.

Each lost attempt stays in the ledger as ``failed`` rows with the job id and SLURM's state; the
next attempt records its own rows (``attempt`` counts on).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tierflow.storage.db.database import Database
from tierflow.storage.db.repo.ledger import done_in_run, running_rows, settle_running
from tierflow.flows.slurm.scheduler import SlurmScheduler

__all__ = ["LostBatch", "RetryDecision", "SlurmBatchRetries", "scale_memory"]


@dataclass(frozen=True)
class LostBatch:
    """A batch whose task died with its worker."""

    block_ids: list[str]
    error: str


@dataclass(frozen=True)
class RetryDecision:
    """What to do with a lost batch: ``"memory"`` (same batch, bigger jobs), ``"split"`` (two
    halves), ``"requeue"`` (it never started: submit it again as it was), ``"finished"`` (its
    blocks are done in the ledger; only its answer was lost with the worker) or ``"fail"``."""

    action: str
    batches: list[list[str]]
    job_id: str | None
    state: str
    attempt: int
    finished: int = 0
    """Blocks of the batch this run finished before its worker was lost (counted as computed)."""


def scale_memory(memory: str, factor: float) -> str:
    """``"4GB" * 2 -> "8GB"`` (dask-jobqueue memory strings; the unit is kept)."""
    import re

    match = re.fullmatch(r"\s*([\d.]+)\s*([A-Za-z]*)\s*", memory)
    if not match:
        raise ValueError(f"memory {memory!r} is not a number with a unit, e.g. 4GB")
    value = float(match.group(1)) * factor
    return f"{value:.0f}{match.group(2)}" if value >= 10 else f"{value:.1f}{match.group(2)}"


@dataclass
class SlurmBatchRetries:
    """Decide and record the fate of lost batches of one op in one run."""

    db: Database
    run_id: int
    op_key: str
    array_uri: str
    scheduler: SlurmScheduler = field(default_factory=SlurmScheduler)
    max_attempts: int = 3

    def decide(self, lost: LostBatch) -> RetryDecision:
        with self.db.session() as session:
            rows = running_rows(session, self.run_id, self.op_key, self.array_uri, lost.block_ids)
        if not rows:  # it never started, or it finished and only its answer died with the worker
            with self.db.session() as session:
                finished = done_in_run(session, self.run_id, self.op_key, self.array_uri, lost.block_ids)
            rest = [block_id for block_id in lost.block_ids if block_id not in finished]
            if not rest:
                return RetryDecision("finished", [], None, "COMPLETED", 0, len(finished))
            return RetryDecision("requeue", [rest], None, "NOT_STARTED", 0, len(finished))
        with self.db.session() as session:
            job_id = rows[-1].slurm_job_id if rows else None
            attempt = max((row.attempt or 1 for row in rows), default=1)
            job = self.scheduler.job(job_id) if job_id else None
            state = job.state if job is not None else "UNKNOWN"
            where = f"SLURM job {job_id}" if job_id else "its worker"
            settle_running(session, self.run_id, self.op_key, self.array_uri, lost.block_ids,
                           error=f"{where} ended {state} with the batch: {lost.error}")
        if attempt >= self.max_attempts:
            return RetryDecision("fail", [lost.block_ids], job_id, state, attempt)
        if state == "OUT_OF_MEMORY":
            return RetryDecision("memory", [lost.block_ids], job_id, state, attempt)
        if state == "TIMEOUT" and len(lost.block_ids) > 1:
            half = len(lost.block_ids) // 2
            return RetryDecision("split", [lost.block_ids[:half], lost.block_ids[half:]], job_id, state, attempt)
        return RetryDecision("fail", [lost.block_ids], job_id, state, attempt)


def run_with_slurm_retries(runner: Any, bigger_runner: Callable[[], Any], task: Any, job: Any, batches: Sequence[Sequence[str]],
                           retries: SlurmBatchRetries, progress: Any = None, log: Callable[[str], None] = print) -> Any:
    """:func:`flows.execution.batching.run_batches` on SLURM workers, with lost batches handled as the
    module docstring says. Returns a :class:`flows.execution.batching.BatchOutcome`."""
    from tierflow.flows.execution.batching import BatchOutcome, collect_batches, submit_batches

    total = BatchOutcome()
    pending: list[tuple[Any, Any, list[list[str]]]] = [(runner, job, [list(b) for b in batches])]
    bigger = None
    requeued: dict[tuple[str, ...], int] = {}
    try:
        while pending:
            target, current_job, current = pending.pop(0)
            futures = submit_batches(target, task, current_job, current)
            outcome = collect_batches(futures, progress, lost=True)
            total.results += outcome.results
            total.failed += outcome.failed
            total.first_error = total.first_error or outcome.first_error
            for lost in outcome.lost:
                decision = retries.decide(LostBatch(lost.block_ids, lost.error))
                log(f"batch {lost.block_ids[0]}..{lost.block_ids[-1]} lost with SLURM job {decision.job_id} "
                    f"({decision.state}), attempt {decision.attempt}: {decision.action}")
                next_job = replace(current_job, attempt_offset=decision.attempt)
                if decision.finished:  # written in this run before the worker went: computed, not to redo
                    total.results.append({"done": decision.finished, "seconds": 0.0})
                requeued[tuple(lost.block_ids)] = requeued.get(tuple(lost.block_ids), 0) + (decision.action == "requeue")
                if decision.action == "finished":
                    continue
                if decision.action == "requeue" and requeued[tuple(lost.block_ids)] <= retries.max_attempts:
                    pending.append((target, current_job, decision.batches))
                elif decision.action == "memory":
                    if bigger is None:
                        bigger = bigger_runner()
                        bigger.__enter__()
                    pending.append((bigger, next_job, decision.batches))
                elif decision.action == "split":
                    pending.append((target, next_job, decision.batches))
                else:
                    total.failed += [block_id for batch in decision.batches for block_id in batch]
                    total.first_error = total.first_error or (
                        f"SLURM job {decision.job_id} ended {decision.state} with blocks {lost.block_ids[0]}..: {lost.error}")
    finally:
        if bigger is not None:
            bigger.__exit__(None, None, None)
    return total
