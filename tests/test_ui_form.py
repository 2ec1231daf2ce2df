"""The run form of a pipeline deployment in the Prefect UI, checked in a real browser.

A real ``prefect server start`` serving its UI on a free loopback port, a checkout with a
pipeline of its own (``spots``: bounds, choices, descriptions) deployed by the real
``tierflow deploy``, then Debian's headless ``chromium`` opening the deployment's *Custom run*
page (``/v2/deployments/deployment/<id>/run``, the default UI, and ``/deployments/...`` the V1
UI): every parameter of the spec is a field of its own, with its title, description, type,
default and bounds, not one opaque ``params`` JSON box. ``form.png`` in the test's tmp folder
is the page as a user sees it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import TIERFLOW, require_service
from prefect_servers import clean_env, make_checkout, prefect_server

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

SPOTS_DESCRIPTION = "bright spots of channel 1: smoothed, a fixed threshold, connected components"
CELLS_DESCRIPTION = "cells: gaussian -> threshold (Otsu) -> connected components; features, tracks, pyramids"
SPOTS = f'name = "spots"\ndescription = "{SPOTS_DESCRIPTION}"\n' + """
[params]
sigma = { default = 1.5, le = 20, description = "smoothing of channel 1, voxels" }
level = { default = "2000", description = "intensity above which a voxel is a spot" }
connectivity = { default = 6, choices = [6, 26], description = "neighbours that join voxels into one spot" }
levels = { default = 2, ge = 1, le = 4, description = "pyramid levels written per volume" }

[[stages]]
name = "smooth"
op = "gaussian"
input = "raw.c1"
params = { sigma = "{sigma}" }

[[stages]]
name = "mask"
op = "threshold"
input = "smooth"
params = { value = "{level}" }

[[stages]]
name = "objects"
op = "label"
input = "mask"
params = { connectivity = "{connectivity}" }

[outputs]
features = { labels = "objects", channels = ["raw.c0"] }
pyramid = { inputs = ["objects"], levels = "{levels}" }
"""


# --- the browser ---------------------------------------------------------------------------


def _chromium(tmp: Path, url: str, *args: str, timeout: float = 120) -> str:
    """One headless chromium run on ``url`` (its own profile; the page gets 30 s of virtual
    time, which does not pass while requests to the API are pending); returns its stdout."""
    assert CHROMIUM is not None
    profile = tmp / "chromium-profile"
    command = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--hide-scrollbars", f"--user-data-dir={profile}", "--virtual-time-budget=30000", *args, url]
    browser = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = browser.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(browser.pid, signal.SIGKILL)
        browser.communicate()
        raise AssertionError(f"chromium did not finish {url} in {timeout:.0f} s") from None
    assert browser.returncode == 0, f"chromium exited {browser.returncode} on {url}: {err[-2000:]}"
    return out


def _render(tmp: Path, url: str, until: str, timeout: float = 150) -> Form:
    """The page's DOM once ``until`` is a label of it (reloaded until then: a loaded machine
    may answer the UI's API calls late)."""
    deadline = time.monotonic() + timeout
    while True:
        form = Form.parse(_chromium(tmp, url, "--dump-dom"))
        if form.field(until) is not None:
            return form
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} never showed a field {until!r}; the page said: {' | '.join(form.texts)[:3000]}")


@dataclass
class Control:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    options: list[str] = field(default_factory=list)
    selected: str | None = None


@dataclass
class Field:
    label: str
    description: str | None
    control: Control | None


class Form(HTMLParser):
    """A dumped page as its reader sees it: the texts in order, each label with the text just
    after it (the description) and the first form control after it (its input)."""

    _CONTROL_TAGS = ("textarea", "select")

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []
        self.fields: list[Field] = []
        self._events: list[tuple[str, object]] = []
        self._skip = 0
        self._label: list[str] | None = None
        self._label_at = 0
        self._open: Control | None = None
        self._open_tag = ""

    @classmethod
    def parse(cls, html: str) -> Form:
        form = cls()
        form.feed(html)
        form.close()
        form._link()
        return form

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "label":
            self._label = []
        elif tag == "input":
            self._events.append(("control", Control(tag, values)))
        elif tag in self._CONTROL_TAGS or (tag == "button" and values.get("aria-haspopup") == "listbox"):
            self._open, self._open_tag = Control(tag, values), tag
            self._events.append(("control", self._open))
        elif tag == "option" and self._open is not None:
            self._open.options.append(values.get("value", ""))
            if "selected" in values:
                self._open.selected = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag == "label" and self._label is not None:
            self._events.append(("label", (" ".join(self._label), len(self.texts))))
            self._label = None
        elif self._open is not None and tag == self._open_tag:
            self._open = None

    def handle_data(self, data: str) -> None:
        text = " ".join(data.split())
        if self._skip or not text:
            return
        self.texts.append(text)
        if self._label is not None:
            self._label.append(text)
        if self._open is not None:
            self._open.text += text

    def _link(self) -> None:
        for i, (kind, value) in enumerate(self._events):
            if kind != "label":
                continue
            label, after = value  # type: ignore[misc]
            control = next((c for k, c in self._events[i + 1:] if k == "control"), None)
            description = self.texts[after] if after < len(self.texts) else None
            self.fields.append(Field(label, description, control))  # type: ignore[arg-type]

    def field(self, title: str) -> Field | None:
        """The field labelled ``title`` (``title (Optional)`` for one with a default)."""
        return next((f for f in self.fields if f.label in (title, f"{title} (Optional)")), None)


def _field(form: Form, title: str, description: str) -> Control:
    found = form.field(title)
    assert found is not None, f"no field {title!r} on the form; its labels: {[f.label for f in form.fields]}"
    assert found.description == description, (title, found.description)
    assert found.control is not None, f"the field {title!r} has no input"
    return found.control


# --- the server, the checkout, the deployment ----------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    require_service(CHROMIUM is not None, "chromium (a headless browser for the UI tests)",
                    "install it with `apt-get install -y chromium` (as .ci/run does)")
    return CHROMIUM  # type: ignore[return-value]


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory, chromium: str) -> Iterator[str]:
    """`prefect server start` with its UI; yields the API URL."""
    with prefect_server(tmp_path_factory.mktemp("prefect-ui-home"), ui=True) as url:
        yield url


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, ui_server: str) -> Path:
    """A checkout with the pipeline ``spots`` of its own, deployed with `tierflow deploy`."""
    root = make_checkout(tmp_path_factory.mktemp("lab") / "tierflow", ui_server)
    (root / "configs" / "pipelines").mkdir()
    (root / "configs" / "pipelines" / "spots.toml").write_text(SPOTS)
    done = subprocess.run([TIERFLOW, "deploy"], cwd=root, env=clean_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pipeline/pipeline-spots-local" in done.stdout, done.stdout
    return root


def _deployment(api: str, name: str) -> dict:
    response = httpx.get(f"{api}/deployments/name/pipeline/{name}", timeout=30)
    assert response.status_code == 200, f"no deployment pipeline/{name}: {response.text}"
    return response.json()


# --- the tests -------------------------------------------------------------------------------


def test_tierflow_deploy_writes_one_deployment_per_pipeline_and_pool(deployed: Path, ui_server: str) -> None:
    found = httpx.post(f"{ui_server}/deployments/filter", json={}, timeout=30).json()
    names = {d["name"] for d in found}
    assert {"pipeline-local", "pipeline-slurm", "pipeline-spots-local", "pipeline-spots-slurm", "pipeline-nuclei-local",
            "ingest-local", "promote-slurm", "retention-nightly", "check-local"} <= names
    for name, pipeline, pool in (("pipeline-local", "cells", "tierflow-local"), ("pipeline-slurm", "cells", "tierflow-slurm"),
                                 ("pipeline-spots-local", "spots", "tierflow-local"),
                                 ("pipeline-spots-slurm", "spots", "tierflow-slurm")):
        deployment = _deployment(ui_server, name)
        assert deployment["parameters"] == {"spec": pipeline}, name
        assert deployment["work_pool_name"] == pool and deployment["enforce_parameter_schema"] is True, name
        assert deployment["entrypoint"] == "flows/pipeline/flow.py:pipeline" and deployment["tags"] == ["tierflow"], name
        assert deployment["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(deployed)}}]
        assert deployment["description"] == (SPOTS_DESCRIPTION if pipeline == "spots" else CELLS_DESCRIPTION), name
        schema = deployment["parameter_openapi_schema"]
        assert schema["properties"]["spec"]["enum"] == [pipeline] and schema["required"] == ["dataset"]


def test_the_ui_calls_the_api_of_its_own_server(ui_server: str) -> None:
    settings = httpx.get(ui_server.removesuffix("/api") + "/ui-settings", timeout=30).json()
    assert settings["api_url"] == ui_server
    assert settings["default_ui"] == "v2" and set(settings["available_uis"]) == {"v1", "v2"}


def test_the_run_form_shows_each_parameter_of_the_spec_as_a_typed_field(deployed: Path, ui_server: str, tmp_path: Path) -> None:
    base = ui_server.removesuffix("/api")
    spots = _deployment(ui_server, "pipeline-spots-local")
    url = f"{base}/v2/deployments/deployment/{spots['id']}/run"
    form = _render(tmp_path, url, until="Levels")
    assert "pipeline-spots-local" in form.texts

    dataset = form.field("dataset")  # the flow's own required parameter
    assert dataset is not None and dataset.label == "dataset" and dataset.control.tag == "textarea"
    pipeline = _field(form, "pipeline", SPOTS_DESCRIPTION)
    assert pipeline.text == "spots"
    group = form.field("spots parameters")
    assert group is not None and group.description == "the parameters of spots ([params] in spots.toml)"

    sigma = _field(form, "Sigma", "smoothing of channel 1, voxels")
    assert (sigma.tag, sigma.attrs.get("type"), sigma.attrs.get("max"), sigma.attrs.get("value")) == ("input", "number", "20", "1.5")
    assert sigma.attrs.get("step") == "any"  # a float
    level = _field(form, "Level", "intensity above which a voxel is a spot")
    assert (level.tag, level.text) == ("textarea", "2000")
    connectivity = _field(form, "Connectivity", "neighbours that join voxels into one spot")
    assert (connectivity.tag, connectivity.attrs.get("aria-haspopup"), connectivity.text) == ("button", "listbox", "6")
    levels = _field(form, "Levels", "pyramid levels written per volume")
    assert (levels.tag, levels.attrs.get("type"), levels.attrs.get("min"), levels.attrs.get("max"), levels.attrs.get("step"),
            levels.attrs.get("value")) == ("input", "number", "1", "4", "1", "2")

    # the default pipeline's form: its sigma bounded by cells.toml (le = 50), its choices
    cells = _deployment(ui_server, "pipeline-local")
    cells_form = _render(tmp_path, f"{base}/v2/deployments/deployment/{cells['id']}/run", until="Pyramid Levels")
    cells_sigma = _field(cells_form, "Sigma", "gaussian smoothing before the threshold, voxels")
    assert (cells_sigma.attrs.get("type"), cells_sigma.attrs.get("max"), cells_sigma.attrs.get("value")) == ("number", "50", "1")
    assert _field(cells_form, "Connectivity", "neighbours that connect voxels of one object").text == "26"
    pyramid = _field(cells_form, "Pyramid Levels", "OME-Zarr pyramid levels written per volume")
    assert (pyramid.attrs.get("min"), pyramid.attrs.get("max"), pyramid.attrs.get("value")) == ("1", "10", "3")

    # the picture: the spots form as a user sees it
    picture = tmp_path / "form.png"
    _chromium(tmp_path, url, f"--screenshot={picture}", "--window-size=1400,2200")
    image = np.asarray(Image.open(picture).convert("L"))
    assert image.shape == (2200, 1400) and image.std() > 10  # drawn, not a blank page


def test_the_v1_ui_shows_the_same_typed_fields(deployed: Path, ui_server: str, tmp_path: Path) -> None:
    spots = _deployment(ui_server, "pipeline-spots-local")
    form = _render(tmp_path, f"{ui_server.removesuffix('/api')}/deployments/deployment/{spots['id']}/run", until="Levels")
    sigma = _field(form, "Sigma", "smoothing of channel 1, voxels")
    assert (sigma.tag, sigma.attrs.get("type"), sigma.attrs.get("step")) == ("input", "number", "0.01")  # a float
    assert _field(form, "Level", "intensity above which a voxel is a spot").tag == "textarea"
    connectivity = _field(form, "Connectivity", "neighbours that join voxels into one spot")
    assert (connectivity.tag, connectivity.options, connectivity.selected) == ("select", ["6", "26"], "6")
    levels = _field(form, "Levels", "pyramid levels written per volume")
    assert (levels.tag, levels.attrs.get("type"), levels.attrs.get("step")) == ("input", "number", "1")  # an integer
