"""tierflow's errors, for the storage layer: the one hierarchy lives in :mod:`tierflow.errors`
(below every layer, so pure op declarations in ``tasks/ops`` can raise them without importing
storage); this module re-exports it unchanged."""

from tierflow.errors import *  # noqa: F403 - the same classes, one hierarchy
from tierflow.errors import __all__  # noqa: F401
