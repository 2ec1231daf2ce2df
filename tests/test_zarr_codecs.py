"""The codec pipeline of zarr arrays (``[execution].codec_pipeline``, storage/zarr_codecs.py):
zarrs decodes local arrays opened read-only, zarr-python writes (atomic chunk files) and serves
every other store; zarrs reads what zarr-python wrote bit for bit; worker processes started
afterwards get the same choice; a bad value is refused."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr
from obstore.store import MemoryStore as ObjectMemoryStore
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec
from zarr.storage import MemoryStore, ObjectStore

from tierflow.errors import TierflowError
from tierflow.storage.zarr_codecs import use_codec_pipeline

pytest.importorskip("zarrs")


@pytest.fixture(autouse=True)
def _restore_pipeline(monkeypatch):
    """Every test leaves zarr's pipeline (and the variable worker processes read) as it found them."""
    monkeypatch.delenv("ZARR_CODEC_PIPELINE__PATH", raising=False)
    before = zarr.config.get("codec_pipeline.path")
    yield
    zarr.config.set({"codec_pipeline.path": before})


def _pipeline(array) -> str:
    pipeline = array._async_array.codec_pipeline
    return "zarrs" if getattr(pipeline, "impl", None) is not None else type(pipeline).__name__


def _volume() -> np.ndarray:
    rng = np.random.default_rng(3)
    return (rng.integers(0, 1000, (20, 48, 40)) + np.arange(40)).astype(np.uint16)


@pytest.mark.parametrize("compressors", [[ZstdCodec(level=3)], [BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.bitshuffle)]],
                         ids=["zstd", "blosc-lz4"])
def test_local_inputs_decode_with_zarrs_and_outputs_write_with_zarr_python(tmp_path, compressors):
    data = _volume()
    assert use_codec_pipeline("auto") == "zarrs"
    written = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, chunks=(8, 16, 16), dtype=data.dtype, compressors=compressors)
    assert _pipeline(written) == "BatchedCodecPipeline"  # writes: zarr-python's temporary file + rename
    written[:] = data
    written[3:5, 7:30, 1:2] = 7  # a partial write of several chunks
    expected = data.copy()
    expected[3:5, 7:30, 1:2] = 7
    chunk = tmp_path / "a.zarr" / "c" / "0" / "0" / "0"
    inode = chunk.stat().st_ino
    written[0:1, 0:1, 0:1] = 9
    expected[0, 0, 0] = 9
    assert chunk.stat().st_ino != inode  # rewritten as a new file, not in place

    reread = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")
    assert _pipeline(reread) == "zarrs"
    assert np.array_equal(reread[2:19, 5:47, :], expected[2:19, 5:47, :])
    assert np.array_equal(reread[:], expected)

    assert use_codec_pipeline("zarr-python") == "zarr-python"
    assert _pipeline(zarr.open_array(str(tmp_path / "a.zarr"), mode="r")) == "BatchedCodecPipeline"


@pytest.mark.parametrize("stores", [lambda: (MemoryStore(),) * 2, lambda: _object_stores(ObjectMemoryStore())],
                         ids=["memory", "object-store"])
def test_other_stores_fall_back_to_zarr_python(stores):
    """zarrs rebuilds object stores from their settings (an S3 tier's TLS roots and timeouts
    would be lost) and refuses some: tierflow keeps zarr-python's pipeline there, read-only too."""
    use_codec_pipeline("auto")
    data = _volume()
    writable, read_only = stores()
    zarr.create_array(writable, shape=data.shape, chunks=(8, 16, 16), dtype=data.dtype)[:] = data
    reread = zarr.open_array(read_only, mode="r")
    assert _pipeline(reread) == "BatchedCodecPipeline"
    assert np.array_equal(reread[:], data)


def _object_stores(backend) -> tuple[ObjectStore, ObjectStore]:
    return ObjectStore(backend), ObjectStore(backend, read_only=True)


def test_worker_processes_get_the_choice(tmp_path):
    """A process started after the choice (a Dask worker) finds tierflow's pipeline through its
    entry point, without importing tierflow first."""
    zarr.create_array(str(tmp_path / "a.zarr"), shape=(4, 4), dtype="uint8")[:] = 5
    probe = ("import json, sys, zarr; a = zarr.open_array(sys.argv[1], mode='r'); p = a._async_array.codec_pipeline; "
             "print(json.dumps([type(p).__name__, getattr(p, 'impl', None) is not None, int(a[:].sum())]))")
    for choice, expected in (("auto", ["LocalZarrsPipeline", True, 80]), ("zarr-python", ["BatchedCodecPipeline", False, 80])):
        use_codec_pipeline(choice)
        out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "a.zarr")], capture_output=True, text=True, check=True).stdout
        assert json.loads(out) == expected


def test_a_bad_choice_is_refused_naming_the_key():
    with pytest.raises(TierflowError, match=r"\[execution\]\.codec_pipeline 'rust' is not one of auto, zarrs, zarr-python"):
        use_codec_pipeline("rust")
    assert zarr.config.get("codec_pipeline.path") != "rust"



def test_the_config_key_defaults_to_auto_and_refuses_other_values(project, monkeypatch):
    from tierflow.configs import load_config
    from tierflow.errors import ConfigError

    assert load_config(project / "configs").execution.codec_pipeline == "auto"
    monkeypatch.setenv("TIERFLOW_EXECUTION__CODEC_PIPELINE", "zarr-python")
    assert load_config(project / "configs").execution.codec_pipeline == "zarr-python"
    monkeypatch.delenv("TIERFLOW_EXECUTION__CODEC_PIPELINE")
    (project / "configs" / "tierflow.user.toml").write_text('[execution]\ncodec_pipeline = "rust"\n')
    with pytest.raises(ConfigError, match="codec_pipeline") as refused:
        load_config(project / "configs")
    assert "tierflow.user.toml" in str(refused.value) + str(getattr(refused.value, "hint", ""))
