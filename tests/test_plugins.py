"""Block ops from other packages: the example plugin ``examples/labops`` (installed into the venv
by ``make venv``) is found through its entry point, listed, described, validated and run
block-wise through the CLI with real Prefect and PostgreSQL, and equals scikit-image on the whole
volume; a broken plugin breaks only its own op; a kernel returning the wrong shape fails its
block with the op named in the ledger."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import pytest
import zarr
from pydantic import BaseModel, Field
from sqlalchemy import select

from tierflow.configs import load_db_config
from tierflow.errors import InvalidParameterError, PluginError
from tierflow.flows.runtime.database import open_database
from tierflow.ops import OpSpec, block_op
from tierflow.storage.db.models import BlockRecord
from tierflow.tasks.ops.registry import broken_plugins, get_op, op_names, reload_ops

from conftest import run_cli

SHAPE, BLOCKS = (40, 70, 75), (13, 29, 31)  # no block shape divides the volume


@pytest.fixture(scope="module", autouse=True)
def labops_installed() -> None:
    try:
        distribution("labops")
    except PackageNotFoundError:
        pytest.fail("the example plugin examples/labops is not installed in this venv: run `make venv` "
                    "(or `.venv/bin/pip install -e examples/labops`)")


@pytest.fixture
def volume(tmp_path: Path) -> np.ndarray:
    rng = np.random.default_rng(3)
    data = (rng.integers(0, 200, SHAPE) + 3000 * (rng.random(SHAPE) > 0.995)).astype(np.uint16)  # noise and bright specks
    array = zarr.create_array(str(tmp_path / "in.zarr"), shape=SHAPE, chunks=BLOCKS, dtype="uint16")
    array[:] = data
    return data


def _broken_distribution(root: Path) -> Path:
    """A second distribution ``brokenlab`` (a ``*.dist-info`` with entry points, as pip installs
    it) whose ops are broken in every way the registry refuses, and one that runs wrongly."""
    site = root / "site"
    info = site / "brokenlab-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenlab\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[tierflow.ops]\n"
        "broken = brokenlab_missing:op\n"     # the module raises ImportError
        "notspec = brokenlab_ops:NOT_AN_OP\n"  # not an OpSpec
        "gaussian = brokenlab_ops:gaussian\n"  # takes a built-in's name
        "badshape = brokenlab_ops:badshape\n"  # a valid op whose kernel returns the wrong shape
        "serial = brokenlab_ops:serial\n"      # a valid op that takes one thread
    )
    (site / "brokenlab_missing.py").write_text("raise ImportError('brokenlab needs a library that is not installed')\n")
    (site / "brokenlab_ops.py").write_text(
        "from pydantic import BaseModel\n"
        "from tierflow.ops import block_op\n"
        "NOT_AN_OP = {'name': 'notspec'}\n"
        "class P(BaseModel):\n    pass\n"
        "@block_op(name='gaussian', version='1', params=P)\n"
        "def gaussian(block, params):\n    return block\n"
        "@block_op(name='badshape', version='1', params=P, out_dtype='uint16')\n"
        "def badshape(block, params):\n    '''drops a plane: the wrong shape'''\n    return block[1:]\n"
        "@block_op(name='serial', version='1', params=P, resources={'threads': 1})\n"
        "def serial(block, params):\n    return block + 1\n"
    )
    return site


def test_the_plugin_op_is_listed_shown_and_helped_with_its_package_and_schema(project: Path) -> None:
    listed = json.loads(run_cli("ops", "list", "--json", cwd=project).stdout)
    tophat = next(op for op in listed if op["name"] == "tophat")
    assert tophat["package"] == "labops" and tophat["entry_point"] == "tophat = labops.ops:tophat"
    assert tophat["schema"]["properties"]["radius"] == {"default": 3, "description": "radius of the ball, in voxels",
                                                        "maximum": 50, "minimum": 1, "title": "Radius", "type": "integer"}
    assert tophat["schema"]["additionalProperties"] is False  # unknown keys refused, as tierflow's own params
    assert tophat["halo"] == {"3-D": [6, 6, 6], "2-D": [6, 6]}
    assert {op["name"]: op["package"] for op in listed}["gaussian"] == "tierflow"
    table = run_cli("ops", "list", cwd=project).stdout
    assert "labops" in table and "broken plugin" not in table
    shown = run_cli("ops", "show", "tophat", cwd=project).stdout
    assert "labops" in shown and "(6, 6, 6)" in shown and '"maximum": 50' in shown
    helped = run_cli("op", "tophat", "--help", cwd=project).stdout
    assert "radius" in helped and ">= 1 and <= 50" in helped


def test_the_plugin_op_runs_blockwise_equal_to_scikit_image_on_the_whole_volume(project: Path, volume: np.ndarray, tmp_path: Path,
                                                                                 prefect_api: str) -> None:
    from skimage.morphology import ball, white_tophat

    env = {"PREFECT_API_URL": prefect_api}
    args = ("op", "tophat", "-i", str(tmp_path / "in.zarr"), "-o", str(tmp_path / "out.zarr"), "-p", "radius=2",
            "--block-shape", ",".join(map(str, BLOCKS)), "--json")
    first = json.loads(run_cli(*args, cwd=project, env=env).stdout)
    assert first["blocks"] == 4 * 3 * 3 and first["computed"] == 36
    out = zarr.open_array(str(tmp_path / "out.zarr"))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out[:], white_tophat(volume, footprint=ball(2)))
    again = json.loads(run_cli(*args, cwd=project, env=env).stdout)
    assert again["computed"] == 0 and again["blocks"] == 36  # served from the ledger

    refused = run_cli("op", "tophat", "-i", str(tmp_path / "in.zarr"), "-o", str(tmp_path / "zero.zarr"), "-p", "radius=0",
                      cwd=project, env=env, check=False)
    assert refused.returncode != 0
    assert "radius" in refused.stderr and ">= 1" in refused.stderr, refused.stderr
    assert not (tmp_path / "zero.zarr").exists()


def test_a_broken_plugin_names_itself_and_breaks_no_other_op(project: Path, tmp_path: Path, prefect_api: str) -> None:
    env = {"PYTHONPATH": str(_broken_distribution(tmp_path)), "PREFECT_API_URL": prefect_api}
    table = run_cli("ops", "list", cwd=project, env=env).stdout
    for op in ("convert", "gaussian", "watershed", "features", "tophat", "badshape"):
        assert op in table
    flat = " ".join(table.split())
    assert "op 'broken' from plugin brokenlab (entry point broken = brokenlab_missing:op)" in flat
    assert "ImportError: brokenlab needs a library that is not installed" in flat
    assert "op 'notspec' from plugin brokenlab" in flat and "not an op" in flat
    assert "op 'gaussian' from plugin brokenlab" in flat and "one of tierflow's own ops" in flat
    listed = json.loads(run_cli("ops", "list", "--json", cwd=project, env=env).stdout)
    assert {op["name"]: op["package"] for op in listed}["gaussian"] == "tierflow"  # never shadowed

    used = run_cli("op", "broken", "-i", "in.zarr", "-o", "out.zarr", cwd=project, env=env, check=False)
    assert used.returncode != 0
    first = used.stderr.strip().splitlines()[0]
    assert "op 'broken' from plugin brokenlab (entry point broken = brokenlab_missing:op)" in first, used.stderr
    assert "ImportError" in first and "Traceback" not in used.stderr


def test_a_kernel_returning_the_wrong_shape_fails_its_blocks_naming_the_op(project: Path, volume: np.ndarray, tmp_path: Path,
                                                                           prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tierflow.flows.ops.flow import BlockFailuresError, run_op

    monkeypatch.syspath_prepend(str(_broken_distribution(tmp_path)))
    reload_ops()
    try:
        assert get_op("badshape").package == "brokenlab"
        with pytest.raises(BlockFailuresError) as info:
            run_op("badshape", str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), {}, block_shape=BLOCKS, workers=2,
                   config_dir=str(project / "configs"))
        serial = run_op("serial", str(tmp_path / "in.zarr"), str(tmp_path / "serial.zarr"), {}, block_shape=BLOCKS, workers=2,
                        config_dir=str(project / "configs"))
        assert serial["workers"] == 1 and serial["computed"] == 36  # resources={"threads": 1}: one batch at a time
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "serial.zarr"))[:], volume + 1)
    finally:
        reload_ops()
    assert len(info.value.block_ids) == 36
    db = open_database(load_db_config(project / "configs"))
    try:
        with db.session() as session:
            errors = session.execute(select(BlockRecord.block_id, BlockRecord.error).where(BlockRecord.run_id == info.value.run_id)).all()
    finally:
        db.dispose()
    assert len(errors) == 36
    block_id, error = next((b, e) for b, e in errors if b == "0.0.0")
    assert error.startswith("KernelOutputError: op badshape (plugin brokenlab (entry point badshape = brokenlab_ops:badshape))")
    assert "block 0.0.0" in error and "shape (12, 29, 31)" in error and "(13, 29, 31)" in error


# --- the declaration itself, in process -----------------------------------------------------------


class _Params(BaseModel):
    size: float = Field(1.0, gt=0, description="a size")


def test_block_op_gives_an_op_spec_that_validates_like_tierflows_own() -> None:
    @block_op(name="scaled", version="2", params=_Params, halo=lambda p, ndim: (int(p.size),) * ndim,
              resources={"gpu": 1, "memory": "8G"})
    def scaled(block: np.ndarray, params: _Params) -> np.ndarray:
        """Multiply by the size.

        More text."""
        assert isinstance(params, _Params)  # the plugin's own model, not a dict
        return (block * params.size).astype(np.float32)

    assert isinstance(scaled, OpSpec) and scaled.summary == "Multiply by the size."
    assert scaled.resources == {"gpu": 1, "memory": "8G"}
    params = scaled.resolve({"size": "3"})
    assert params == {"size": 3.0} and scaled.halo(params, 3) == (3, 3, 3)
    assert scaled.out_dtype(params, np.dtype(np.uint16)) == np.float32  # probed on a small block
    np.testing.assert_array_equal(scaled.kernel(np.ones((2, 3), np.uint16), params), np.full((2, 3), 3.0, np.float32))
    for given, words in (({"size": "nan"}, ["size", "finite"]), ({"size": "inf"}, ["size"]), ({"size": 0}, ["size", "> 0"]),
                         ({"sizes": 1}, ["sizes", "size"])):
        with pytest.raises(InvalidParameterError) as refused:
            scaled.resolve(given)
        assert all(word in str(refused.value) for word in words), (given, str(refused.value))


@pytest.mark.parametrize(("options", "words"), [
    ({"name": "Bad Name"}, ["Bad Name", "lower case"]),
    ({"version": 1}, ["version"]),
    ({"params": dict}, ["params", "pydantic"]),
    ({"resources": {"cpus": 2}}, ["cpus", "gpu"]),
    ({"resources": {"memory": "lots"}}, ["memory", "8G"]),
    ({"inputs": ("markers",)}, ["markers", "keyword"]),
    ({"out_dtype": "float99"}, ["float99"]),
])
def test_a_wrong_declaration_is_refused_naming_the_op(options: dict, words: list[str]) -> None:
    declared = {"name": "good", "version": "1", "params": _Params, **options}
    with pytest.raises(PluginError) as refused:
        block_op(**declared)(lambda block, params: block)
    assert all(word in str(refused.value) for word in words), str(refused.value)


def test_the_registry_has_the_builtins_first_and_the_plugin() -> None:
    names = op_names()
    from tierflow.tasks.ops.catalog import BUILTIN_OPS

    assert names[:len(BUILTIN_OPS)] == [spec.name for spec in BUILTIN_OPS]  # the built-ins first, as declared
    assert {"convert", "gaussian", "threshold", "label", "downsample", "features"} <= set(names)
    assert "tophat" in names and broken_plugins() == []
    assert get_op("tophat").package == "labops"


def test_op_resources_cap_local_batches_and_are_asked_of_slurm_jobs(project: Path) -> None:
    from tierflow.configs import load_config
    from tierflow.flows.execution.runners import op_workers
    from tierflow.flows.execution.slurm_cluster import slurm_cluster_kwargs

    config = load_config(project / "configs")
    assert config.execution.backend == "threads"
    assert op_workers(config, {"gpu": 1, "memory": "8G"}, 8) == 1
    assert op_workers(config, {"threads": 3}, 8) == 3 and op_workers(config, {}, 8) == 8
    kwargs = slurm_cluster_kwargs(config, resources={"gpu": 2, "memory": "8G"})
    assert kwargs["memory"] == "8G" and "--gpus=2" in kwargs["job_extra_directives"]
    assert slurm_cluster_kwargs(config, resources={"memory": "8G"}, memory_factor=2.0)["memory"] == "16G"  # after an OOM
    plain = slurm_cluster_kwargs(config)
    assert plain["memory"] == config.slurm.memory_per_job and not any("--gpus" in d for d in plain["job_extra_directives"])
