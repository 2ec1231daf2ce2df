"""A killed run's Prefect flow run, ended as Crashed when the run is resumed.

A process killed with SIGKILL (or whose machine went down) cannot tell the Prefect server that
its flow run ended: the server keeps that flow run, and the task runs it had started, in a
Running state for good (tierflow turns off the flow-run heartbeat of runs started from the CLI,
see :func:`flows.runtime.prefect_env.interactive_flows`). ``tierflow resume RUN`` knows the run's
process is dead (its liveness lock is gone, :mod:`storage.db.locks`), so it records that end in
Prefect too: the UI and the API then show no run left running that nothing runs
(``benchmarks/scale.py`` counts non-terminal task runs after a SIGKILL and resume).
"""

from __future__ import annotations

from uuid import UUID

__all__ = ["crash_flow_run"]

_NOT_ENDED = ["SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"]


def crash_flow_run(flow_run_id: str | UUID, message: str) -> int:
    """Set the flow run ``flow_run_id`` and each of its task runs not in a final state to
    Crashed with ``message`` (a flow run already final is left as it is); returns how many task
    runs were ended. Call it only for a run whose process is known dead."""
    from prefect import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterState,
                                                TaskRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    flow_run_id = UUID(str(flow_run_id))
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        if flow_run.state is not None and flow_run.state.is_final():
            return 0
        unfinished = TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType(s) for s in _NOT_ENDED])))
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), task_run_filter=unfinished)
        for task_run in tasks:
            client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
        client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
    return len(tasks)
