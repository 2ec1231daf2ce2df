"""The example notebook runs top to bottom (nbclient), as a user would run it."""

from __future__ import annotations

import shutil

import nbformat
from nbclient import NotebookClient
from sqlalchemy import text

from conftest import REPO_ROOT


def test_the_example_notebook_executes(project, prefect_api, monkeypatch):
    folder = project / "notebooks"
    folder.mkdir()
    for name in ("pipeline.ipynb", "config.def.toml"):
        shutil.copy(REPO_ROOT / "notebooks" / name, folder / name)
    (folder / "config.user.toml").write_text('[data]\ndataset = "nb-user"\n')  # the user overlay wins
    monkeypatch.setenv("TIERFLOW_CONFIG_DIR", str(project / "configs"))
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    notebook = nbformat.read(folder / "pipeline.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    outputs = "\n".join(out.get("text", "") or str(out.get("data", {}).get("text/plain", ""))
                        for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", []))
    assert "no deployment" in outputs or "queued flow run" in outputs
    assert (project / "var" / "notebook" / "raw" / "sample1").is_dir()  # config.def.toml's path, resolved
    from tierflow.configs import load_db_config
    from tierflow.flows.runtime.database import open_database

    with open_database(load_db_config(project / "configs")).session() as session:  # the overlay's dataset name
        assert session.execute(text("SELECT count(*) FROM snapshots WHERE dataset = 'nb-user'")).scalar_one() == 1
        assert session.execute(text("SELECT count(*) FROM runs WHERE flow_name = 'pipeline' AND status = 'completed'")).scalar_one() == 1
