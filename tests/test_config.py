"""Configuration: defaults < user overlay < environment, the upward search, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tierflow.configs import find_config_dir, load_config, load_db_config
from tierflow.storage.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_are_found_upward_and_resolve_against_the_project_root(project, monkeypatch):
    monkeypatch.chdir(project / "analysis" / "notebooks")
    config = load_config()
    assert config.meta.config_dir == project / "configs"
    assert config.meta.found_by == "search"
    assert config.tier_root("source") == str(project / "var" / "tier1-source")
    assert config.tier_root("scratch") == str(project / "var" / "tier3-scratch")
    assert config.state_dir == project / "var" / "tier4-ephemeral" / "state"
    assert config._meta is config.meta  # the seed's `_meta` spelling works too
    db = load_db_config()
    assert db.mode == "embedded"
    assert db.data_path == project / "var" / "tier4-ephemeral" / "state" / "postgres"


def test_user_overlay_wins_key_by_key_and_environment_wins_over_both(project, monkeypatch):
    write(
        project / "configs" / "tierflow.user.toml",
        '[execution]\nmax_workers = 3\n[tiers.scratch]\nroot = "/fast/scratch"\n',
    )
    config = load_config(project)
    assert config.execution.max_workers == 3
    assert config.execution.block_shape == (64, 256, 256)  # untouched keys keep their defaults
    assert config.tier_root("scratch") == "/fast/scratch"
    assert config.tier_root("output") == str(project / "var" / "tier2-output")
    assert config.meta.files == [project / "configs" / "tierflow.def.toml", project / "configs" / "tierflow.user.toml"]

    monkeypatch.setenv("TIERFLOW_EXECUTION__MAX_WORKERS", "5")
    monkeypatch.setenv("TIERFLOW_TIERS__SCRATCH__ROOT", "/env/scratch")
    config = load_config(project)
    assert config.execution.max_workers == 5
    assert config.tier_root("scratch") == "/env/scratch"
    assert "TIERFLOW_EXECUTION__MAX_WORKERS" in config.meta.env_overrides


def test_db_config_layers_and_whole_url_from_the_environment(project, monkeypatch):
    write(project / "configs" / "db.user.toml", "[database]\nport = 6543\n")
    assert load_db_config(project).port == 6543
    monkeypatch.setenv("TIERFLOW_DATABASE__PORT", "7654")
    assert load_db_config(project).port == 7654
    monkeypatch.setenv("TIERFLOW_DB_URL", "postgresql://lab:s3cret@db.example:5432/results")
    config = load_db_config(project)
    assert config.mode == "external"
    assert config.url is not None and config.url.get_secret_value().endswith("/results")
    assert "s3cret" not in repr(config)


def test_explicit_folder_and_config_dir_variable(project, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config_dir(project / "configs").config_dir == project / "configs"
    assert find_config_dir(project / "analysis").config_dir == project / "configs"
    monkeypatch.setenv("TIERFLOW_CONFIG_DIR", str(project / "configs"))
    assert load_config().meta.found_by == "env"
    monkeypatch.setenv("TIERFLOW_CONFIG_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="TIERFLOW_CONFIG_DIR"):
        load_config()


def test_without_any_configs_folder_the_packaged_defaults_apply(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    config = load_config()
    assert config.meta.config_dir is None and config.meta.found_by == "packaged"
    assert config.tier_root("source") == str(tmp_path / "xdg" / "tierflow" / "var" / "tier1-source")


def test_external_database_without_password_names_the_file_and_key(project):
    write(project / "configs" / "db.user.toml", '[database]\nmode = "external"\nhost = "db.lab"\nport = 5432\n')
    with pytest.raises(ConfigError) as info:
        load_db_config(project)
    error = info.value
    assert "no password" in error.message
    assert str(project / "configs" / "db.user.toml") in error.hint
    assert 'password = "..."' in error.hint and "[database]" in error.hint


def test_external_database_takes_its_password_from_the_environment(project, monkeypatch):
    write(project / "configs" / "db.user.toml", '[database]\nmode = "external"\nport = 5432\n')
    monkeypatch.setenv("TIERFLOW_DATABASE__PASSWORD", "from-env")
    config = load_db_config(project)
    assert config.password is not None and config.password.get_secret_value() == "from-env"


@pytest.mark.parametrize(
    ("file", "text", "expected"),
    [
        ("tierflow.user.toml", "[execution]\nmax_workers = -2\n", "execution.max_workers"),
        ("tierflow.user.toml", "[execution]\nmax_wrokers = 2\n", "execution.max_wrokers"),
        ("tierflow.user.toml", '[tiers.source]\nbackend = "s3"\n', "tiers.source"),
        ("tierflow.user.toml", '[execution]\nbackend = "kubernetes"\n', "execution.backend"),
        ("db.user.toml", '[database]\nport = 70000\n', "database.port"),
        # negative case: tierflow refuses any database but PostgreSQL
        ("db.user.toml", '[database]\nmode = "sqlite"\n', "database.mode"),
    ],
)
def test_bad_values_name_the_file_and_key(project, file, text, expected):
    path = write(project / "configs" / file, text)
    loader = load_db_config if file.startswith("db") else load_config
    with pytest.raises(ConfigError) as info:
        loader(project)
    assert f"{path}: {expected}" in info.value.message


def test_a_bad_environment_value_names_the_variable(project, monkeypatch):
    monkeypatch.setenv("TIERFLOW_EXECUTION__MAX_WORKERS", "many")
    with pytest.raises(ConfigError, match=r"\$TIERFLOW_EXECUTION__MAX_WORKERS: execution.max_workers"):
        load_config(project)


def test_toml_syntax_errors_name_the_file(project):
    path = write(project / "configs" / "tierflow.user.toml", "[execution\nmax_workers = 1\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_config(project)


@pytest.mark.parametrize(
    ("overlay", "first", "second", "roots"),
    [
        ('[tiers.ephemeral]\nroot = "var/tier1-source"\n', "source", "ephemeral", ("var/tier1-source", "var/tier1-source")),
        ('[tiers.scratch]\nroot = "var/tier1-source/scratch"\n', "source", "scratch", ("var/tier1-source", "var/tier1-source/scratch")),
        ('[tiers.output]\nroot = "var"\n', "source", "output", ("var/tier1-source", "var")),
        ('[tiers.source]\nbackend = "s3"\nroot = "s3://lab/raw"\nendpoint_url = "http://rgw:8000"\n'
         '[tiers.scratch]\nbackend = "s3"\nroot = "s3://lab/raw/tmp/"\nendpoint_url = "http://rgw:8000"\n', "source", "scratch",
         ("s3://lab/raw", "s3://lab/raw/tmp")),
    ],
)
def test_overlapping_tier_roots_are_refused_naming_both_keys_and_roots(project, overlay, first, second, roots):
    write(project / "configs" / "tierflow.user.toml", overlay)
    with pytest.raises(ConfigError) as caught:
        load_config(project)
    message = caught.value.message
    shown = [root if root.startswith("s3://") else str(project / root) for root in roots]
    assert f"tiers.{first}.root ({shown[0]}, from " in message and f"tiers.{second}.root ({shown[1]}, from " in message
    assert "overlap" in message and "tierflow.user.toml" in message and caught.value.hint


def test_separate_tier_roots_on_one_bucket_or_two_gateways_are_accepted(project):
    write(project / "configs" / "tierflow.user.toml",
          '[tiers.source]\nbackend = "s3"\nroot = "s3://lab/raw"\nendpoint_url = "http://rgw:8000"\n'
          '[tiers.output]\nbackend = "s3"\nroot = "s3://lab/raw-output"\nendpoint_url = "http://rgw:8000"\n'
          '[tiers.scratch]\nbackend = "s3"\nroot = "s3://lab/raw"\nendpoint_url = "http://other-rgw:8000"\n')
    config = load_config(project)
    assert config.tier_root("output") == "s3://lab/raw-output" and config.tier_root("scratch") == "s3://lab/raw"


@pytest.mark.parametrize("holds", ["tierflow.user.toml", "pipelines/spots.toml"])
def test_a_projects_configs_with_only_overlays_or_pipelines_is_found_upward(tmp_path, monkeypatch, holds):
    """A lab's project may hold only its overlay or its pipeline specs (no *.def.toml): it is
    still the project (the defaults come from the packaged copy); a Hydra-style configs/ of YAML
    files is not."""
    project = tmp_path / "lab"
    (project / "configs" / "pipelines").mkdir(parents=True)
    (project / "configs" / holds).write_text('[execution]\nmax_workers = 3\n' if holds.endswith("user.toml") else
                                             'name = "spots"\n[[stages]]\nname = "s"\nop = "gaussian"\ninput = "raw.c0"\n'
                                             'params = { sigma = 1.0 }\n')
    (project / "analysis").mkdir()
    monkeypatch.chdir(project / "analysis")
    found = find_config_dir()
    assert (found.config_dir, found.project_root, found.how) == (project / "configs", project, "search")
    config = load_config()
    assert config.tier_root("source") == str(project / "var" / "tier1-source")  # the project's var/, not the user's data folder
    if holds.endswith("user.toml"):
        assert config.execution.max_workers == 3
    hydra = tmp_path / "hydra"
    (hydra / "configs").mkdir(parents=True)
    (hydra / "configs" / "config.yaml").write_text("defaults: []\n")
    monkeypatch.chdir(hydra)
    assert find_config_dir().how == "packaged"
