"""tierflow against its peers, side by side, on one volume (default 512 MiB uint16).

    .venv/bin/python benchmarks/run.py [--size-mib 512] [--skip dask-image-label] [--out results.json]

Each contender runs in its own process (this script re-invoked with ``--one NAME``); the parent
samples the RSS of that process tree every 50 ms for its peak. Contenders:

* gaussian sigma=2, uint16 out: tierflow (zarr -> zarr), dask-image (zarr -> zarr), bioimage-py
  (zarr -> zarr), SciPy in memory (compute only; the load is reported apart);
* connected components (26-connectivity) of a uint8 mask: tierflow, SciPy and cc3d in memory,
  bioimage-py, dask-image;
* 3-level pyramid (levels 1-3, mean): tierflow, dask ``coarsen``, scikit-image in memory;
* tierflow's orchestration share (wall minus task bodies over workers) and a cached re-run;
* tierflow's peak RSS on a volume 4x larger (memory must stay bounded).

Inputs are zarr v3, chunks 64x256x256 (zstd); outputs are written with the same chunks. The
Prefect server is started once and warmed up with one tiny op before the contenders.
Prints a table of wall times, peak RSS and ratios, and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHUNKS = (64, 256, 256)
ROOT = Path(__file__).resolve().parents[1]


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

    source = inputs["image"] if kind.startswith(("gaussian", "pyramid")) else inputs["mask"]
    if kind == "gaussian-4x":
        source = inputs["image_4x"]
    op, params = {
        "gaussian": ("gaussian", {"sigma": 2.0}),
        "gaussian-4x": ("gaussian", {"sigma": 2.0}),
        "label": ("label", {"connectivity": 26}),
        "pyramid": ("downsample", {"levels": 4, "method": "mean"}),
        "gaussian-rerun": ("gaussian", {"sigma": 2.0}),
    }[kind]
    out = str(work / ("out-tierflow-gaussian.zarr" if kind == "gaussian-rerun" else f"out-tierflow-{kind}.zarr"))
    with interactive_flows():  # as the CLI runs flows
        result = run_op(op, source, out, params, block_shape=CHUNKS, workers=os.cpu_count(), config_dir=configs)
    return {k: result[k] for k in ("computed", "batches", "task_seconds", "workers") if k in result}


def _skimage_pyramid(data: np.ndarray) -> None:
    from skimage.transform import downscale_local_mean

    level = data
    for _ in range(3):
        level = downscale_local_mean(level, (2, 2, 2)).astype(np.uint16)


def _scipy_gaussian(data: np.ndarray) -> None:
    from scipy import ndimage

    ndimage.gaussian_filter(data, 2.0, output=np.uint16)


def _scipy_label(data: np.ndarray) -> None:
    from scipy import ndimage

    ndimage.label(data, structure=np.ones((3, 3, 3)))


def _cc3d_label(data: np.ndarray) -> None:
    import cc3d

    cc3d.connected_components(data, connectivity=26, binary_image=True, out_dtype=np.uint32)


IN_MEMORY = {"scipy-gaussian": ("image", _scipy_gaussian), "scipy-label": ("mask", _scipy_label), "cc3d-label": ("mask", _cc3d_label),
             "skimage-pyramid": ("image", _skimage_pyramid)}
"""In-memory contenders: which input they load whole, and what they compute on it."""


def run_contender(name: str, inputs: dict, work: Path, configs: str) -> dict:
    import zarr

    image, mask = inputs["image"], inputs["mask"]
    out = str(work / f"out-{name}.zarr")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(f"{out}.tierflow-label", ignore_errors=True)  # label's merge state: every repeat is a first run
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
        compute(data)
    elif name == "dask-image-gaussian":
        import dask.array as da
        from dask_image.ndfilters import gaussian_filter

        source = da.from_zarr(zarr.open_array(image))
        gaussian_filter(source, sigma=2.0).astype(np.uint16).to_zarr(_zarr_out(out, source))
    elif name == "dask-image-label":
        import dask.array as da
        from dask_image.ndmeasure import label

        source = da.from_zarr(zarr.open_array(mask))
        labels, _ = label(source, structure=np.ones((3, 3, 3)))
        labels.astype(np.uint32).to_zarr(_zarr_out(out, source, "uint32"))
    elif name == "dask-coarsen-pyramid":
        import dask.array as da

        level = da.from_zarr(zarr.open_array(image))
        for index in range(3):
            level = da.coarsen(np.mean, level, {0: 2, 1: 2, 2: 2}, trim_excess=True).astype(np.uint16)
            level.to_zarr(_zarr_out(f"{out}/{index + 1}", level, shape=level.shape))
            level = da.from_zarr(zarr.open_array(f"{out}/{index + 1}"))
    elif name in ("bioimage-py-gaussian", "bioimage-py-label"):
        import bioimage_py.filters as filters
        import bioimage_py.segmentation as segmentation

        if name.endswith("gaussian"):
            source = zarr.open_array(image)
            filters.gaussian_smoothing(source, 2.0, _zarr_out(out, source), block_shape=CHUNKS, num_workers=os.cpu_count())
        else:
            source = zarr.open_array(mask)
            # bioimage-py labels block-wise only with 6-connectivity (it refuses 26)
            segmentation.label(source, _zarr_out(out, source, "uint64"), connectivity=1, block_shape=CHUNKS, num_workers=os.cpu_count())
    else:
        raise SystemExit(f"unknown contender {name}")
    return {"wall": time.perf_counter() - started, **extra}


# -- parent -----------------------------------------------------------------------------------


def measure(name: str, inputs: dict, work: Path, configs: str, env: dict, timeout: float) -> dict:
    import psutil

    command = [sys.executable, __file__, "--one", name, "--inputs", json.dumps(inputs), "--work", str(work), "--configs", configs]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
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
    if process.returncode != 0:
        return {"error": (err.strip().splitlines() or ["failed"])[-1][:300]}
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mib"] = peak / 2**20
    return result


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
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender; the median wall time is reported")
    parser.add_argument("--merge", action="store_true", help="update the --out file with these contenders' results")
    parser.add_argument("--out", default="benchmarks/results.json")
    parser.add_argument("--one")
    parser.add_argument("--inputs")
    parser.add_argument("--work")
    parser.add_argument("--configs")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_contender(args.one, json.loads(args.inputs), Path(args.work), args.configs)))
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
    port = 4200 + os.getpid() % 500
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    try:
        import urllib.request

        for _ in range(300):
            try:
                urllib.request.urlopen(env["PREFECT_API_URL"] + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        subprocess.run(
            [str(Path(sys.executable).with_name("tierflow")), "--config", str(configs), "db", "upgrade"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        _warm_up_server(work, configs, env)
        names = [
            "scipy-gaussian",
            "tierflow-gaussian",
            "dask-image-gaussian",
            "bioimage-py-gaussian",
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
        ]
        names = [n for n in names if n not in args.skip and (args.only is None or n in args.only)]
        results = {}
        for name in names:
            runs = []
            for _ in range(args.repeat):
                if name == "tierflow-gaussian-rerun" and runs:
                    pass  # the first run's output is still there: every repeat is a cached re-run
                elif name == "tierflow-gaussian" and runs:
                    shutil.rmtree(work / "out-tierflow-gaussian.zarr", ignore_errors=True)
                runs.append(measure(name, inputs, work, str(configs), env, args.timeout))
            ok = sorted((r for r in runs if "error" not in r), key=lambda r: r["wall"])
            results[name] = ok[len(ok) // 2] if ok else runs[-1]
            if len(ok) > 1:
                results[name]["walls"] = [round(r["wall"], 3) for r in runs if "error" not in r]
            shown = results[name].get("error") or f"{results[name]['wall']:.2f} s, peak RSS {results[name]['peak_rss_mib']:.0f} MiB"
            print(f"  {name:28s} {shown}" + (f"  (median of {len(ok)}: {results[name]['walls']})" if len(ok) > 1 else ""), flush=True)
        if args.merge and Path(args.out).is_file():
            results = {**json.loads(Path(args.out).read_text())["results"], **results}
        report(results, args.size_mib)
        Path(args.out).write_text(
            json.dumps({"size_mib": args.size_mib, "shape": inputs["shape"], "repeat": args.repeat, "results": results}, indent=2)
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        subprocess.run(
            [str(Path(sys.executable).with_name("tierflow")), "--config", str(configs), "db", "stop"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        shutil.rmtree(work, ignore_errors=True)


def report(results: dict, size_mib: int) -> None:
    def wall(name: str) -> float | None:
        return results.get(name, {}).get("wall")

    def ratio(a: str, b: str) -> str:
        x, y = wall(a), wall(b)
        return f"{x / y:.2f}x" if x and y else "n/a"

    print(f"\nratios on {size_mib} MiB (target in brackets):")
    print(f"  gaussian: tierflow / dask-image        {ratio('tierflow-gaussian', 'dask-image-gaussian')}  [<= 0.8]")
    print(f"  gaussian: tierflow / SciPy in memory   {ratio('tierflow-gaussian', 'scipy-gaussian')}  [<= 1.1]")
    print(f"  gaussian: tierflow / bioimage-py       {ratio('tierflow-gaussian', 'bioimage-py-gaussian')}")
    print(f"  label:    tierflow / SciPy in memory   {ratio('tierflow-label', 'scipy-label')}  [<= 0.5]")
    print(f"  label:    tierflow / cc3d in memory    {ratio('tierflow-label', 'cc3d-label')}")
    print(f"  label:    tierflow / bioimage-py       {ratio('tierflow-label', 'bioimage-py-label')}")
    print(f"  label:    tierflow / dask-image        {ratio('tierflow-label', 'dask-image-label')}")
    print(f"  pyramid:  tierflow / dask coarsen      {ratio('tierflow-pyramid', 'dask-coarsen-pyramid')}  [<= 1]")
    print(f"  pyramid:  tierflow / scikit-image      {ratio('tierflow-pyramid', 'skimage-pyramid')}")
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
