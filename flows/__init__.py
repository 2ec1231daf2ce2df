"""Flows of tierflow and its command line: the composition root.

Flows read configuration, build stores, databases and task runners, and wire tasks.
Importing this package is cheap; it only sets tierflow's safe Prefect defaults (analytics off,
a longer ephemeral-server start-up timeout) where the environment has none.
"""

from tierflow.flows.runtime.prefect_env import apply_defaults as _apply_prefect_defaults

_apply_prefect_defaults()
