"""``tierflow deploy`` (work pools + deployments) and ``tierflow worker`` (start a pool's worker)."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.table import Table

from tierflow.flows.cli._app import console, print_json, state

__all__ = ["register"]


def deploy(
    ctx: typer.Context,
    name: Annotated[list[str] | None, typer.Option(
        "--name", metavar="NAME", help="Only this deployment (repeatable), e.g. pipeline-slurm.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create the work pools (tierflow-local, tierflow-slurm) and apply deployments/prefect.yaml."""
    from dataclasses import asdict

    from tierflow.configs import load_config
    from tierflow.flows.runtime.deployments import apply_deployments, ensure_pools, require_server
    from tierflow.flows.runtime.prefect_env import configure_prefect

    config = load_config(state(ctx).config_path)
    configure_prefect(config)
    url = require_server(config)
    os.environ["PREFECT_API_URL"] = url
    pools = ensure_pools(config)
    output = apply_deployments(config, names=name)
    deployed = [line.strip() for line in output.splitlines() if "Deployment '" in line and "successfully created" in line]
    pipelines = []
    if not name:
        from tierflow.flows.pipeline.deployments import deploy_pipelines

        pipelines = deploy_pipelines(state(ctx).config_path)
    if as_json:
        print_json({"server": url, "pools": [asdict(p) for p in pools], "deployments": deployed,
                    "pipelines": [asdict(made) for made in pipelines]})
        return
    table = Table("work pool", "type", "", "concurrency limit", title=f"Prefect server {url}")
    for pool in pools:
        table.add_row(pool.name, pool.type, "created" if pool.created else "updated", str(pool.concurrency_limit or "none"))
    console.print(table)
    for line in deployed:
        console.print(line)
    for made in pipelines:
        console.print(f"Deployment 'pipeline/{made.name}': pipeline {made.pipeline} with its parameters as a run form")
    console.print("Start a worker per pool: `tierflow worker local` and, on a SLURM login node, `tierflow worker slurm`.")


def worker(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(metavar="KIND", help="local (process pool) or slurm (tierflow-slurm pool).")],
    run_once: Annotated[bool, typer.Option("--run-once", help="Submit what is scheduled now, then stop.")] = False,
) -> None:
    """Start the worker of a pool (`prefect worker start --pool ... --type ...` with tierflow's settings)."""
    from tierflow.configs import load_config
    from tierflow.flows.runtime.deployments import LOCAL_POOL, SLURM_POOL, project_home, require_server
    from tierflow.flows.runtime.prefect_env import configure_prefect
    from tierflow.flows.slurm.worker import WORKER_TYPE
    from tierflow.storage.errors import TierflowError

    pools = {"local": (LOCAL_POOL, "process"), "slurm": (SLURM_POOL, WORKER_TYPE)}
    if kind not in pools:
        raise TierflowError(f"no worker kind {kind!r}", hint="use `tierflow worker local` or `tierflow worker slurm`")
    config = load_config(state(ctx).config_path)
    configure_prefect(config)
    pool, worker_type = pools[kind]
    env = dict(os.environ, PREFECT_API_URL=require_server(config), TIERFLOW_HOME=str(project_home(config)))
    command = [
        sys.executable,
        "-m",
        "prefect",
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        worker_type,
        *(["--run-once"] if run_once else []),
    ]
    console.print(f"$ {' '.join(command[2:])}")
    os.chdir(project_home(config))
    os.execve(sys.executable, command, env)


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)
    app.command("worker")(worker)
