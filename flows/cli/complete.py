"""Shell completion of the names a user types (``tierflow --install-completion`` turns it on):
op names after ``tierflow op`` / ``tierflow ops show``, pipeline names after ``tierflow run pipeline``.
A completion never fails the shell: whatever cannot be read completes to nothing."""

from __future__ import annotations

from typing import Any

__all__ = ["op_names", "pipeline_names"]


def op_names(ctx: Any, incomplete: str) -> list[str]:
    """Registered ops (built in and from plugins) starting with ``incomplete``."""
    try:
        from tierflow.tasks.ops.registry import op_names as registered

        return [name for name in registered() if name.startswith(incomplete)]
    except Exception:  # noqa: BLE001 - a broken plugin must not break the user's shell
        return []


def pipeline_names(ctx: Any, incomplete: str) -> list[str]:
    """The project's and tierflow's pipelines (``tierflow pipelines list``) starting with ``incomplete``."""
    try:
        from tierflow.flows.pipeline.library import list_specs

        config_dir = ctx.find_root().params.get("config")
        return [spec.name for spec in list_specs(config_dir) if spec.name.startswith(incomplete)]
    except Exception:  # noqa: BLE001 - a spec that does not load must not break the user's shell
        return []
