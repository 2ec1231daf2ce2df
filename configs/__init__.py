"""Configuration of tierflow: the ``*.def.toml`` defaults, ``*.user.toml`` overlays and the
typed loader that reads them.

>>> from configs import load_config, load_db_config   # doctest: +SKIP
>>> load_config().tier_root("source")                  # doctest: +SKIP
"""

from tierflow.configs.layers import deep_merge, find_config_dir
from tierflow.configs.notebook import load_notebook_config
from tierflow.configs.settings import DatabaseConfig, TierflowConfig, load_config, load_db_config

__all__ = [
    "DatabaseConfig",
    "TierflowConfig",
    "deep_merge",
    "find_config_dir",
    "load_config",
    "load_db_config",
    "load_notebook_config",
]
