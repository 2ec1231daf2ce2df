"""The example notebook runs top to bottom (nbclient), as a user would run it, reporting to the
project's managed Prefect server (started by the notebook; stopped by the ``project`` fixture)."""

from __future__ import annotations

import json
import shutil
import socket

import httpx
import nbformat
from nbclient import NotebookClient
from sqlalchemy import text

from conftest import REPO_ROOT


def test_the_example_notebook_executes_and_its_runs_land_in_the_managed_prefect_server(project, monkeypatch):
    folder = project / "notebooks"
    folder.mkdir()
    for name in ("pipeline.ipynb", "config.def.toml"):
        shutil.copy(REPO_ROOT / "notebooks" / name, folder / name)
    (folder / "config.user.toml").write_text('[data]\ndataset = "nb-user"\n')  # the user overlay wins
    monkeypatch.setenv("TIERFLOW_CONFIG_DIR", str(project / "configs"))
    # no PREFECT_API_URL: the notebook starts the project's managed Prefect server (on a free
    # port, not a developer's 4200), as `tierflow ui` would find it
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        monkeypatch.setenv("TIERFLOW_PREFECT__PORT", str(probe.getsockname()[1]))
    notebook = nbformat.read(folder / "pipeline.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    outputs = "\n".join(out.get("text", "") or str(out.get("data", {}).get("text/plain", ""))
                        for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", []))
    server = json.loads((project / "var" / "tier4-ephemeral" / "state" / "prefect" / "server.json").read_text())
    assert f"Prefect API: {server['url']}/api" in outputs
    assert "no deployment" in outputs  # looked up on the managed server, which has none
    assert (project / "var" / "notebook" / "raw" / "sample1").is_dir()  # config.def.toml's path, resolved
    from tierflow.configs import load_db_config
    from tierflow.flows.runtime.database import open_database

    with open_database(load_db_config(project / "configs")).session() as session:  # the overlay's dataset name
        assert session.execute(text("SELECT count(*) FROM snapshots WHERE dataset = 'nb-user'")).scalar_one() == 1
        assert session.execute(text("SELECT count(*) FROM runs WHERE flow_name = 'pipeline' AND status = 'completed'")).scalar_one() == 1
    flows = {flow["id"]: flow["name"] for flow in httpx.post(f"{server['url']}/api/flows/filter", json={}, timeout=30).json()}
    runs = httpx.post(f"{server['url']}/api/flow_runs/filter", json={}, timeout=30).json()
    assert [run["state_type"] for run in runs if flows[run["flow_id"]] == "pipeline"] == ["COMPLETED"]
