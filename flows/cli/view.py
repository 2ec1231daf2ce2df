"""CLI: ``tierflow view PATH-or-RUN``: serve OME-Zarr images and print their Neuroglancer links."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from tierflow.flows.cli._app import console

__all__ = ["register"]

DEFAULT_APP = "https://neuroglancer-demo.appspot.com"


def _settings(ctx: typer.Context) -> tuple[Any, str, int]:
    """The project's config (None outside a project), the Neuroglancer app and the default port."""
    from urllib.parse import urlparse

    try:
        from tierflow.flows.cli.data import _config

        config = _config(ctx)
    except Exception:  # noqa: BLE001 - viewing a folder needs no project
        return None, DEFAULT_APP, 9000
    return config, config.pipeline.neuroglancer_url, urlparse(config.pipeline.data_url).port or 9000


def _run_folder(ctx: typer.Context, run: str) -> tuple[Path | None, dict[str, str]]:
    """A pipeline run's promoted folder on a POSIX Tier 1 (its images are in ``images/``), or
    None and the run's own links (an S3 Tier 1 is read through its endpoint)."""
    from tierflow.errors import TierflowError
    from tierflow.flows.cli.data import _database, _existing_run

    with _database(ctx).session() as session:
        result = dict(_existing_run(session, run).result or {})
    images = result.get("images") or {}
    if not images:
        raise TierflowError(f"run {run} has no sample images", hint="give a pipeline run whose spec has [outputs] image (cells has)")
    uris = [str(image["uri"]) for image in images.values() if image.get("uri")]
    if not all(uri.startswith("file://") for uri in uris):
        return None, {image["name"]: image["link"] for image in images.values() if image.get("link")}
    return Path(uris[0][len("file://"):]).parent.parent, {}


def view(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(metavar="PATH|RUN", help="An OME-Zarr image, a folder of them, or a pipeline run id.")],
    port: Annotated[int | None, typer.Option(
        "--port", min=1, max=65535, metavar="PORT", help="Default: the port of [pipeline].data_url (9000).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the root, URL and links as one JSON line.")] = False,
) -> None:
    """Serve an OME-Zarr image (or a folder of them, or a pipeline run's images) read-only over
    HTTP with CORS on 127.0.0.1 and print a Neuroglancer link per image: its channels, its labels
    as segmentation layers, time as a dimension. Ctrl-C stops it."""
    from tierflow.flows.viewing.view import plan_view, view_server

    _, app_url, default_port = _settings(ctx)
    port = port or default_port
    folder: Path | None = Path(target)
    links: dict[str, str] = {}
    if target.isdigit() and not folder.exists():
        folder, links = _run_folder(ctx, target)
    if folder is None:  # on S3: nothing to serve
        if as_json:
            print(json.dumps({"root": None, "url": None, "links": links}))
        for name, link in links.items() if not as_json else ():
            console.print(f"[bold]{name}[/]: {link}", soft_wrap=True)
        return
    url = f"http://127.0.0.1:{port}"
    plan = plan_view(folder, data_url=url, app_url=app_url)
    server = view_server(plan.root, port)
    if as_json:
        print(json.dumps({"root": str(plan.root), "url": url, "links": plan.links}), flush=True)
    else:
        console.print(f"serving {plan.root} at {url} with CORS; Ctrl-C stops")
        for name, link in plan.links.items():
            console.print(f"[bold]{name}[/]: {link}", soft_wrap=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def register(app: typer.Typer) -> None:
    app.command("view")(view)
