"""Typed settings of tierflow, read from ``configs/`` (see :mod:`configs.layers`).

:func:`load_config` reads ``tierflow*.toml`` (tiers, execution, Prefect);
:func:`load_db_config` reads ``db*.toml`` (the results database). Both validate types and
bounds and name the file and key at fault; both carry ``_meta`` with the resolved folder and
paths. Only flows, the CLI and notebooks call them: tasks and storage get explicit arguments.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tierflow.configs.layers import ConfigLayers, ConfigLocation, find_config_dir, read_layers
from tierflow.extras import require_extra
from tierflow.storage.errors import ConfigError

__all__ = [
    "ConfigMeta",
    "DatabaseConfig",
    "ExecutionSettings",
    "PipelineSettings",
    "PrefectSettings",
    "RetentionSettings",
    "SlurmSettings",
    "TierSettings",
    "TierflowConfig",
    "load_config",
    "load_db_config",
]

DB_URL_ENV = "TIERFLOW_DB_URL"
TIER_NAMES = ("source", "output", "scratch", "ephemeral")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TierSettings(_Section):
    """One storage tier: a backend and a root (and, for S3, how to reach the gateway)."""

    backend: Literal["posix", "s3"] = Field("posix", description="`posix` (local/CephFS path) or `s3` (RADOS Gateway)")
    root: str = Field(..., min_length=1, description="A path, or s3://bucket/prefix for the s3 backend")
    endpoint_url: str | None = Field(None, description="S3: the RADOS Gateway URL")
    region: str = Field("us-east-1", description="S3: signing region (RGW accepts any)")
    profile: str | None = Field(None, description="S3: a profile of ~/.aws/credentials")
    access_key_id: SecretStr | None = Field(None, description="S3: access key (user overlay only)")
    secret_access_key: SecretStr | None = Field(None, description="S3: secret key (user overlay only)")
    verify: bool | str = Field(True, description="S3: TLS verification: true, false or a CA bundle path")
    multipart_threshold_mb: int = Field(64, ge=5, le=5120)
    multipart_chunk_mb: int = Field(16, ge=5, le=5120)
    max_concurrency: int = Field(4, ge=1, le=64)
    claim_stale_seconds: float = Field(
        3600, gt=0, le=7 * 86400,
        description="S3: a killed multipart upload's claim (and its unfinished upload) is abandoned after this many seconds",
    )
    connect_timeout_seconds: float = Field(10, gt=0, le=600, description="S3: seconds to wait for a connection")
    read_timeout_seconds: float = Field(120, gt=0, le=3600, description="S3: seconds to wait for the next bytes of an answer")
    max_attempts: int = Field(5, ge=1, le=20, description="S3: attempts per request, the first included")
    retry_mode: Literal["standard", "adaptive"] = Field("standard", description="S3: botocore retry mode")

    @model_validator(mode="after")
    def _root_matches_backend(self) -> TierSettings:
        is_s3 = self.root.startswith("s3://")
        if self.backend == "s3" and not is_s3:
            raise ValueError(f"backend 's3' needs a root like s3://bucket/prefix, not {self.root!r}")
        if self.backend == "posix" and is_s3:
            raise ValueError(f"root {self.root!r} is an S3 URI: set backend = \"s3\"")
        return self


class TiersSettings(_Section):
    """The four retention tiers."""

    source: TierSettings = Field(description="Tier 1: raw snapshots and promoted artifacts, write-once")
    output: TierSettings = Field(description="Tier 2: figures, tables, metadata JSON; kept until promoted")
    scratch: TierSettings = Field(description="Tier 3: large intermediate arrays; deleted after promotion")
    ephemeral: TierSettings = Field(description="Tier 4: logs, tmp, worker state; rotated by age")

    @model_validator(mode="after")
    def _ephemeral_is_local(self) -> TiersSettings:
        if self.ephemeral.backend != "posix":
            raise ValueError("tiers.ephemeral must be a local path (backend = \"posix\"): it holds logs and state")
        return self


class ExecutionSettings(_Section):
    """Where and how block work runs."""

    backend: Literal["threads", "dask", "slurm"] = "threads"
    max_workers: int = Field(0, ge=0, le=4096, description="0 = one per CPU core")
    block_shape: tuple[int, int, int] = (64, 256, 256)
    max_task_runs: int = Field(1000, ge=1, le=5000)
    memory_limit_percent: float = Field(90, gt=0, le=100, description="Stop a run cleanly above this share of RAM in use")
    codec_pipeline: Literal["auto", "zarrs", "zarr-python"] = Field(
        "auto", description="zarr codec pipeline that decodes local inputs: auto = zarrs (Rust) when installed, else zarr-python's")
    shard_outputs: bool = Field(False, description="Write op outputs as zarr v3 shards of the block shape holding small chunks")

    @model_validator(mode="after")
    def _positive_block_shape(self) -> ExecutionSettings:
        if any(side <= 0 for side in self.block_shape):
            raise ValueError(f"block_shape {list(self.block_shape)} must be positive on every axis")
        return self

    @model_validator(mode="after")
    def _slurm_installed(self) -> ExecutionSettings:
        if self.backend == "slurm":  # the `slurm` extra: missing, nothing runs (not even an ingest)
            require_extra("slurm", ("dask_jobqueue",), '[execution].backend = "slurm"')
        return self


class SlurmSettings(_Section):
    """SLURM jobs for block work (``[execution].backend = "slurm"``) and the SLURM worker."""

    partition: str = Field("", description="sbatch --partition; empty: the cluster's default")
    account: str = Field("", description="sbatch --account; empty: none")
    cores_per_job: int = Field(1, ge=1, le=1024, description="CPUs of one Dask worker job")
    memory_per_job: str = Field("4GB", min_length=1, description="Memory of one Dask worker job, e.g. 16GB")
    walltime: str = Field("01:00:00", pattern=r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$", description="Job time limit HH:MM:SS")
    max_jobs: int = Field(0, ge=0, le=10000, description="0 = [execution].max_workers jobs")
    job_directives: list[str] = Field(default_factory=list, description="Extra #SBATCH lines, e.g. --exclusive")
    python: str = Field("", description="Python on the compute nodes; empty: the one running tierflow")
    qos: str = Field("", description="sbatch --qos; empty: none")
    constraint: str = Field("", description="sbatch --constraint; empty: none")
    preamble: str = Field("", description="Shell lines every job runs first, e.g. module load python/3.11")
    flow_run_time: str = Field("04:00:00", pattern=r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$", description="Time limit of a flow run's job")
    flow_run_mem: str = Field("4G", pattern=r"^\d+[KMGTkmgt]?[Bb]?$", description="Memory of a flow run's job, e.g. 8G")
    flow_run_cpus: int = Field(1, ge=1, le=1024, description="CPUs of a flow run's job")
    pool_concurrency: int = Field(0, ge=0, le=100000, description="Most flow runs of the SLURM pool at once (tierflow deploy); 0: no limit")
    oom_memory_factor: float = Field(2.0, gt=1, le=16, description="A block batch that ran out of memory is retried with this much more")


class PipelineSettings(_Section):
    """Site defaults of pipeline runs: the block shape, report links, and (optional) overrides of
    any pipeline's ``[params]`` of the same name (``--param`` overrides them per run)."""

    segment_channel: int | None = Field(None, ge=0, description="Channel that is smoothed, thresholded and labelled")
    sigma: float | None = Field(None, gt=0, le=50, description="Gaussian smoothing before the threshold, voxels")
    threshold: str | None = Field(None, description='"otsu" or a number')
    connectivity: Literal[6, 18, 26] | None = None
    max_distance: float | None = Field(None, gt=0, description="Tracking: largest move between time points, voxels")
    frame_interval: float | None = Field(None, gt=0, description="Seconds (or any unit) between time points")
    pyramid_levels: int | None = Field(None, ge=1, le=10)
    block_shape: tuple[int, int, int] = (16, 128, 128)
    shard_shape: tuple[int, int, int] | None = Field(
        None, description="Shards (z, y, x) of the sample images: zarr v3 sharding, whole shards per block (for S3/Ceph)")
    neuroglancer_url: str = Field("https://neuroglancer-demo.appspot.com", description="Neuroglancer app for report links")
    data_url: str = Field("http://127.0.0.1:9000", description="Where `tierflow serve` publishes Tier 1 for Neuroglancer")


class RetentionSettings(_Section):
    """When retention deletes from Tiers 2-4 (Tier 1 is never touched)."""

    scratch_max_age_days: float = Field(30, ge=0, description="0 disables the age rule for scratch")
    output_grace_days: float = Field(7, ge=0)
    ephemeral_max_age_days: float = Field(14, ge=0, description="0 disables rotation of Tier 4 logs/tmp")


class PrefectSettings(_Section):
    """How tierflow talks to Prefect."""

    api_url: str = Field("", description="A shared Prefect server's API; empty: the one [prefect].server says")
    server: Literal["managed", "ephemeral"] = Field(
        "managed", description="managed: one local server under Tier 4 state, shared by every run; ephemeral: Prefect's own per process")
    port: int = Field(4200, ge=1, le=65535, description="The managed server's port (another free one if it is taken)")
    database: Literal["auto", "postgres", "sqlite"] = Field(
        "auto", description="The managed server's database; auto: the embedded PostgreSQL, SQLite beside an external results DB")
    database_name: str = Field("prefect", min_length=1, max_length=63, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    startup_timeout_seconds: int = Field(300, ge=10, le=3600)
    ephemeral_startup_timeout_seconds: int = Field(120, ge=10, le=3600)
    executor: bool = Field(True, description="A warm executor beside the managed server runs flow-running commands (Linux)")
    executor_idle_minutes: float = Field(240, gt=0, le=7 * 24 * 60, description="The warm executor ends after this long without a command")
    analytics_enabled: bool = False


class ConfigMeta(BaseModel):
    """Where a configuration came from and the paths it resolved to."""

    model_config = ConfigDict(frozen=True)

    config_dir: Path | None
    project_root: Path
    found_by: str
    files: list[Path]
    env_overrides: list[str]
    paths: dict[str, str]


class _FilesThenEnv(BaseSettings):
    """Settings whose file layers arrive as init values and the environment overrides them."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)


class TierflowConfig(_FilesThenEnv):
    """Settings of ``configs/tierflow*.toml``; ``_meta`` says where they came from."""

    model_config = SettingsConfigDict(
        env_prefix="TIERFLOW_", env_nested_delimiter="__", extra="forbid", frozen=True
    )
    tiers: TiersSettings
    execution: ExecutionSettings = ExecutionSettings()
    retention: RetentionSettings = RetentionSettings()
    slurm: SlurmSettings = SlurmSettings()
    pipeline: PipelineSettings = PipelineSettings()
    prefect: PrefectSettings = PrefectSettings()
    _meta: ConfigMeta = PrivateAttr()

    @property
    def meta(self) -> ConfigMeta:
        """Where this configuration came from and the paths it resolved to."""
        return self._meta

    def tier_root(self, tier: str) -> str:
        """The resolved root of a tier: an absolute path or an ``s3://`` URI."""
        return self._meta.paths[f"tiers.{tier}"]

    @property
    def state_dir(self) -> Path:
        """Tier 4 folder for worker state (the embedded database lives here)."""
        return Path(self._meta.paths["state_dir"])

    @property
    def logs_dir(self) -> Path:
        """Tier 4 folder for run logs."""
        return Path(self._meta.paths["logs_dir"])

    @property
    def tmp_dir(self) -> Path:
        """Tier 4 folder for temporary files."""
        return Path(self._meta.paths["tmp_dir"])


class DatabaseConfig(_FilesThenEnv):
    """Settings of ``[database]`` in ``configs/db*.toml``; ``_meta`` says where they came from."""

    model_config = SettingsConfigDict(env_prefix="TIERFLOW_DATABASE__", extra="forbid", frozen=True)
    mode: Literal["embedded", "external"] = "embedded"
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(0, ge=0, le=65535, description="0 = the embedded server picks a free port")
    dbname: str = Field("tierflow", min_length=1, max_length=63)
    user: str = Field("tierflow", min_length=1, max_length=63)
    password: SecretStr | None = None
    data_dir: str = Field("state/postgres", min_length=1)
    connect_timeout_seconds: int = Field(10, ge=1, le=600)
    url: SecretStr | None = Field(None, description=f"A whole URL, from ${DB_URL_ENV}")
    _meta: ConfigMeta = PrivateAttr()

    @property
    def meta(self) -> ConfigMeta:
        """Where this configuration came from and the paths it resolved to."""
        return self._meta

    @property
    def data_path(self) -> Path:
        """The embedded server's directory, resolved."""
        return Path(self._meta.paths["data_dir"])


def _env_overrides(prefix: str) -> list[str]:
    return sorted(name for name in os.environ if name.upper().startswith(prefix))


def _source_of(dotted: str, layers: ConfigLayers) -> str:
    """Where a key's value came from: its ``TIERFLOW_*`` variable, else the file that set it."""
    env_name = "TIERFLOW_" + dotted.replace(".", "__").upper()
    return f"${env_name}" if env_name in os.environ else layers.source_of(dotted)


def _validation_error(exc: ValidationError, layers: ConfigLayers, section: str = "") -> ConfigError:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        dotted = f"{section}.{key}" if section else key
        source = _source_of(dotted, layers)
        got = error.get("input")
        shown = "" if isinstance(got, (dict, SecretStr)) or "password" in dotted else f" (got {got!r})"
        lines.append(f"{source}: {dotted}: {error['msg']}{shown}")
    return ConfigError(
        "invalid configuration:\n  " + "\n  ".join(lines),
        hint="fix these keys in the file named (or the TIERFLOW_* environment variable that set them)",
    )


def _resolve_path(root: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root / path)


def _root_parts(settings: TierSettings, resolved: str) -> tuple[str, ...]:
    """Where a tier's root is, as path parts that overlap exactly when one root holds the other
    (an S3 root is placed under its endpoint, so equal bucket names on two gateways differ)."""
    if settings.backend == "s3":
        return ("s3", settings.endpoint_url or "", *[part for part in resolved[len("s3://"):].split("/") if part])
    return ("posix", *Path(resolved).parts)


def _refuse_overlapping_roots(config: TierflowConfig, paths: dict[str, str], layers: ConfigLayers) -> None:
    """Refuse two tiers whose roots are the same or nested: retention of one would delete the
    other's files (scratch inside source), or write into write-once Tier 1.

    Raises
    ------
    ConfigError
        Naming both keys, the files that set them, and both roots.
    """
    parts = {tier: _root_parts(getattr(config.tiers, tier), paths[f"tiers.{tier}"]) for tier in TIER_NAMES}
    for index, first in enumerate(TIER_NAMES):
        for second in TIER_NAMES[index + 1:]:
            a, b = parts[first], parts[second]
            if a[:len(b)] == b or b[:len(a)] == a:
                where = {tier: _source_of(f"tiers.{tier}.root", layers) for tier in (first, second)}
                raise ConfigError(
                    f"tiers.{first}.root ({paths[f'tiers.{first}']}, from {where[first]}) and tiers.{second}.root "
                    f"({paths[f'tiers.{second}']}, from {where[second]}) overlap: each tier needs a root of its own",
                    hint="give every tier a separate folder or bucket prefix, none inside another",
                )


def _tierflow(location: ConfigLocation) -> TierflowConfig:
    layers = read_layers("tierflow", location)
    try:
        config = TierflowConfig(**layers.values)
    except ValidationError as exc:
        raise _validation_error(exc, layers) from None
    paths: dict[str, str] = {}
    for tier in TIER_NAMES:
        settings: TierSettings = getattr(config.tiers, tier)
        if settings.backend == "s3":
            paths[f"tiers.{tier}"] = settings.root.rstrip("/")
        else:
            paths[f"tiers.{tier}"] = str(_resolve_path(location.project_root, settings.root).resolve())
    _refuse_overlapping_roots(config, paths, layers)
    ephemeral = Path(paths["tiers.ephemeral"])
    paths.update(
        state_dir=str(ephemeral / "state"), logs_dir=str(ephemeral / "logs"), tmp_dir=str(ephemeral / "tmp")
    )
    config._meta = ConfigMeta(
        config_dir=location.config_dir,
        project_root=location.project_root,
        found_by=location.how,
        files=layers.files,
        env_overrides=_env_overrides("TIERFLOW_"),
        paths=paths,
    )
    return config


def load_config(path: str | os.PathLike[str] | None = None) -> TierflowConfig:
    """Load ``configs/tierflow.def.toml``, its ``.user.toml`` overlay and the environment.

    Parameters
    ----------
    path
        A configs folder or a folder to search upward from; ``None`` searches upward from the
        working directory. ``$TIERFLOW_CONFIG_DIR`` overrides both.

    Returns
    -------
    TierflowConfig
        Validated settings; ``config.meta`` (alias ``config._meta``) holds the folder, files and
        resolved tier roots.

    Raises
    ------
    ConfigError
        With the file and key at fault.

    Examples
    --------
    >>> cfg = load_config()                      # doctest: +SKIP
    >>> cfg.tier_root("scratch")                 # doctest: +SKIP
    '/home/me/tierflow/var/tier3-scratch'
    """
    return _tierflow(find_config_dir(path))


def load_db_config(path: str | os.PathLike[str] | None = None) -> DatabaseConfig:
    """Load ``[database]`` from ``configs/db.def.toml``, its overlay and the environment.

    ``$TIERFLOW_DB_URL`` supplies a whole URL (it then wins over host, port, user, password and
    dbname). ``mode = "external"`` needs a password from ``db.user.toml``,
    ``$TIERFLOW_DATABASE__PASSWORD`` or the URL.

    Parameters
    ----------
    path
        As for :func:`load_config`.

    Returns
    -------
    DatabaseConfig
        Validated settings; ``data_path`` is the embedded server's directory under Tier 4.

    Raises
    ------
    ConfigError
        On a bad key or value, or an external server without a password: the message names
        ``configs/db.user.toml`` and the key to add.
    """
    location = find_config_dir(path)
    tierflow = _tierflow(location)
    layers = read_layers("db", location)
    unknown = sorted(set(layers.values) - {"database"})
    if unknown:
        raise ConfigError(
            f"{layers.source_of(unknown[0])}: unknown table(s) {unknown}; database settings go under [database]"
        )
    values: dict[str, Any] = dict(layers.values.get("database", {}))
    env_url = os.environ.get(DB_URL_ENV)
    if env_url:
        values["url"] = env_url
        values["mode"] = "external"
    try:
        config = DatabaseConfig(**values)
    except ValidationError as exc:
        raise _validation_error(exc, layers, "database") from None
    data_dir = _resolve_path(Path(tierflow.tier_root("ephemeral")), config.data_dir)
    user_file = (location.config_dir or Path("configs")) / "db.user.toml"
    if config.mode == "external" and config.url is None:
        if config.password is None:
            raise ConfigError(
                f"database mode is \"external\" ({config.user}@{config.host}:{config.port}/{config.dbname}) "
                "but no password is set",
                hint=f'add password = "..." under [database] in {user_file} (git-ignored), '
                "or set TIERFLOW_DATABASE__PASSWORD",
            )
        if config.port == 0:
            raise ConfigError(
                f"{layers.source_of('database.port')}: database.port is 0, which only the embedded server accepts",
                hint=f"set port = 5432 (or your server's port) under [database] in {user_file}",
            )
    config._meta = ConfigMeta(
        config_dir=location.config_dir,
        project_root=location.project_root,
        found_by=location.how,
        files=layers.files,
        env_overrides=_env_overrides("TIERFLOW_DATABASE__") + ([DB_URL_ENV] if env_url else []),
        paths={"data_dir": str(data_dir.resolve()), "state_dir": str(tierflow.state_dir)},
    )
    return config
