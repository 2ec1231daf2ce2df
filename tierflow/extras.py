"""Optional dependency groups (extras) and the clear error when one a feature needs is missing.

The default install runs the demo on one machine; heavier or narrower dependencies are extras
(``pyproject.toml``): ``server`` (the FastAPI release range Prefect's own server runs with),
``s3`` (boto3 and obstore for S3 tiers and ``s3://`` inputs), ``slurm`` (dask-jobqueue for
``[execution].backend = "slurm"``), ``bioimage-cpp`` (the gaussian's ``bioimage-cpp`` backend)
and ``all``. A feature calls :func:`require_extra` (or :func:`require_server_extra`) before its
work starts, so a missing package stops it with the ``pip install`` that fixes it instead of an
``ImportError`` half-way through a run.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

from tierflow.errors import MissingExtraError

__all__ = ["SERVER_FASTAPI", "missing_modules", "require_extra", "require_server_extra"]

SERVER_FASTAPI = (0, 151)
"""The first FastAPI release Prefect 3.8.8's server fails with (see ``server`` in pyproject.toml):
from 0.151 ``prefect deploy`` gets 422 answers; from 0.155 the server does not import."""

# the distribution that provides each importable name (for the message)
_DISTRIBUTIONS = {"boto3": "boto3", "obstore": "obstore", "dask_jobqueue": "dask-jobqueue", "bioimage_cpp": "bioimage-cpp"}


def missing_modules(modules: Sequence[str]) -> list[str]:
    """The top-level modules of ``modules`` that cannot be imported (found without importing
    them; a name set to ``None`` in ``sys.modules`` counts as missing, as the import would fail)."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def require_extra(extra: str, modules: Sequence[str], feature: str) -> None:
    """Raise :class:`MissingExtraError` naming ``feature`` and ``pip install 'tierflow[extra]'``
    when one of ``modules`` is not installed."""
    missing = missing_modules(modules)
    if missing:
        packages = ", ".join(_DISTRIBUTIONS.get(name, name) for name in missing)
        raise MissingExtraError(f"{feature} needs {packages}: not installed here (tierflow's {extra!r} extra)",
                                hint=f"pip install 'tierflow[{extra}]' (in the environment of {sys.executable})")


def require_server_extra(feature: str) -> None:
    """Raise :class:`MissingExtraError` when the installed FastAPI is one Prefect 3.8.8's server
    cannot run with (the ``server`` extra pins the range that works).

    ``feature`` is the server started on this machine when ``[prefect].api_url`` is empty (the
    managed server, or Prefect's ephemeral one). A client of a shared server never calls this,
    so its install may carry any FastAPI release.
    """
    import fastapi
    from packaging.version import Version

    version = str(fastapi.__version__)
    if Version(version).release >= SERVER_FASTAPI:
        limit = ".".join(map(str, SERVER_FASTAPI))
        raise MissingExtraError(
            f"{feature} runs on this machine and fails with FastAPI {version} (Prefect 3.8.8's server needs FastAPI < {limit})",
            hint=f"pip install 'tierflow[server]' (in the environment of {sys.executable}), "
                 "or set [prefect].api_url to a shared Prefect server")
