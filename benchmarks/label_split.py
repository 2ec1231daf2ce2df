"""Connected components (26-conn.) of the benchmark mask: tierflow's ``label`` op beside SciPy and
cc3d on the whole volume in memory, interleaved round by round (load from other work hits them
alike), with the split of tierflow's wall time over its stages and the I/O bounds.

    .venv/bin/python benchmarks/label_split.py [--size-mib 512] [--rounds 3] [--before /work/main]

Contenders, each in its own process per round (the order rotates every round), medians printed:

* ``scipy-label`` / ``cc3d-label``: the whole mask loaded (timed apart), then labelled;
  every contender reports its process's CPU seconds beside its wall (``cpu``: what a loaded
  machine changes least; tierflow's counts both threads);
* ``tierflow-label``: ``run_op("label")`` as ``benchmarks/run.py`` runs it, its wall split into
  the local pass, merge (+ output creation) and relabel pass (the flow's own calls timed);
* ``tierflow-label-before`` (``--before ROOT``): the same with another checkout's code and venv;
* ``read-mask``: read and decode every block of the mask (2 threads): what both passes read;
* ``write-labels``: write uint32 labels block-wise with the label output's codec (2 threads).

``--profile`` instead runs the three stages' kernels serially in this process, block by block,
and prints the seconds of each step (read, label, faces, merge, table, remap, write).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import product
from pathlib import Path

import numpy as np

CHUNKS = (64, 256, 256)
ROOT = Path(__file__).resolve().parents[1]


def make_mask(path: Path, size_mib: int) -> list[int]:
    """The uint8 mask of ``benchmarks/run.py`` (same shape, blobs, chunks and codec)."""
    import zarr
    from scipy import ndimage
    from zarr.codecs import ZstdCodec

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run import shape_for

    shape = shape_for(size_mib)
    rng = np.random.default_rng(0)
    mask = zarr.create_array(str(path), shape=shape, chunks=CHUNKS, dtype="uint8", compressors=[ZstdCodec(level=3)], overwrite=True)
    coarse = rng.random(tuple(-(-s // 8) for s in shape)).astype(np.float32)
    for z0 in range(0, shape[0], CHUNKS[0]):
        z1 = min(shape[0], z0 + CHUNKS[0])
        blobs = ndimage.zoom(coarse[z0 // 8 : -(-z1 // 8)], 8, order=1)[: z1 - z0, : shape[1], : shape[2]]
        mask[z0:z1] = (blobs > 0.6).astype(np.uint8)
    return list(shape)


def _blocks(shape) -> list[tuple[slice, ...]]:
    """The benchmark's blocks (= chunks) in grid order."""
    starts = [range(0, n, c) for n, c in zip(shape, CHUNKS, strict=True)]
    return [tuple(slice(i, min(i + c, n)) for i, c, n in zip(corner, CHUNKS, shape, strict=True)) for corner in product(*starts)]


def _tierflow(mask: str, work: Path, configs: str) -> dict:
    """run_op("label") with the flow's stage calls timed (after the imports ``benchmarks/run.py``
    makes before its timer)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run import _preimport

    _preimport("tierflow-label")
    from tierflow.flows.ops import label as stages
    from tierflow.flows.ops.flow import run_op
    from tierflow.flows.runtime.prefect_env import interactive_flows
    from tierflow.tasks import label_blocks

    split: dict[str, float] = {}
    marks: dict[str, float] = {}

    def timed(function, name):
        def run(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                split[name] = split.get(name, 0.0) + time.perf_counter() - started
                marks.setdefault(f"{name} start", started)
                marks[f"{name} end"] = time.perf_counter()
        return run

    run_batches = stages.run_batches
    stages.run_batches = lambda runner, task, *rest: timed(run_batches, task.name.removeprefix("label-"))(runner, task, *rest)
    for name in ("face_equivalences", "merge_equivalences"):
        setattr(label_blocks, name, timed(getattr(label_blocks, name), f"merge: {name}"))
    with interactive_flows():
        started, cpu = time.perf_counter(), time.process_time()
        run_op("label", mask, str(work / "out-tierflow-label.zarr"), {"connectivity": 26}, block_shape=CHUNKS,
               workers=os.cpu_count(), config_dir=configs)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    merge = marks["relabel start"] - marks["local end"]  # the merge task and the output's creation
    merge_steps = {k: v for k, v in split.items() if k.startswith("merge")}
    return {"wall": wall, "cpu": cpu, "before local": marks["local start"] - started, "local": split["local"], "merge+output": merge,
            **merge_steps, "relabel": split["relabel"], "after relabel": started + wall - marks["relabel end"]}


def _write_labels(mask: str, work: Path) -> dict:
    """Write the mask's uint32 labels block-wise as the label op's output is written (codec,
    chunks, ChunkWriter, 2 threads); the labels are computed first, untimed."""
    import cc3d
    import zarr

    from tierflow.storage.arrays import ChunkWriter, _compressors

    data = zarr.open_array(mask)[:]
    labels = cc3d.connected_components(data, connectivity=26, binary_image=True, out_dtype=np.uint32)
    del data
    out = zarr.create_array(str(work / "out-write-labels.zarr"), shape=labels.shape, chunks=CHUNKS, dtype="uint32",
                            compressors=_compressors("lz4"), fill_value=0, overwrite=True)
    writer = ChunkWriter(out)
    blocks = [np.ascontiguousarray(labels[where]) for where in _blocks(labels.shape)]  # as the relabel pass holds them
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda pair: writer.__setitem__(*pair), zip(_blocks(labels.shape), blocks, strict=True)))
    return {"wall": time.perf_counter() - started}


def run_one(name: str, mask: str, work: Path, configs: str) -> dict:
    import zarr

    shutil.rmtree(work / f"out-{name}.zarr", ignore_errors=True)
    shutil.rmtree(work / "out-tierflow-label.zarr", ignore_errors=True)
    shutil.rmtree(work / "out-tierflow-label.zarr.tierflow-label", ignore_errors=True)  # every run is a first run
    if name.startswith("tierflow-label"):
        return _tierflow(mask, work, configs)
    if name == "write-labels":
        return _write_labels(mask, work)
    if name == "read-mask":
        array = zarr.open_array(mask)
        started = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda where: np.asarray(array[where]), _blocks(array.shape)))
        return {"wall": time.perf_counter() - started}
    started = time.perf_counter()
    data = zarr.open_array(mask)[:]
    load = time.perf_counter() - started
    started, cpu = time.perf_counter(), time.process_time()
    if name == "scipy-label":
        from scipy import ndimage

        ndimage.label(data, structure=np.ones((3, 3, 3)))
    elif name == "cc3d-label":
        import cc3d

        cc3d.connected_components(data, connectivity=26, binary_image=True, out_dtype=np.uint32)
    else:
        raise SystemExit(f"unknown contender {name}")
    return {"wall": time.perf_counter() - started, "cpu": time.process_time() - cpu, "load": load}


def profile(mask: str, work: Path) -> dict:
    """The stages' kernels serially, block by block, as the tasks run them (without Prefect,
    the ledger or threads): seconds per step."""
    import zarr

    from tierflow.storage.arrays import ChunkWriter, _compressors
    from tierflow.tasks.label_blocks import _npz_bytes
    from tierflow.tasks.ops.label import (block_faces, block_table, face_equivalences, label_block, merge_equivalences,
                                          provisional_offsets, relabel_block)

    array = zarr.open_array(mask)
    grid_shape = tuple(-(-n // c) for n, c in zip(array.shape, CHUNKS, strict=True))
    blocks = dict(zip(np.ndindex(*grid_shape), _blocks(array.shape), strict=True))
    split: dict[str, float] = {}

    def step(name: str, work, *args, **kwargs):
        started = time.perf_counter()
        result = work(*args, **kwargs)
        split[name] = split.get(name, 0.0) + time.perf_counter() - started
        return result

    stored, counts = {}, {}
    for index, where in blocks.items():
        data = step("local: read", lambda where=where: np.asarray(array[where]))
        labels, counts[index] = step("local: label", label_block, data, connectivity=26)
        faces = step("local: faces", block_faces, labels)
        stored[index] = step("local: store faces", _npz_bytes, {"count": np.array(counts[index]), **faces})

    def load(raw: bytes) -> dict:
        with np.load(io.BytesIO(raw)) as loaded:
            return {name: loaded[name] for name in loaded.files if name != "count"}

    faces = step("merge: load faces", lambda: {index: load(raw) for index, raw in stored.items()})
    offsets, total = provisional_offsets(counts, list(stored))
    pairs = step("merge: pairs", face_equivalences, grid_shape, faces, offsets, connectivity=26)
    lut = step("merge: table", merge_equivalences, total, pairs)
    writer = ChunkWriter(zarr.create_array(str(work / "out-profile.zarr"), shape=array.shape, chunks=CHUNKS, dtype=lut.dtype,
                                           compressors=_compressors("lz4"), fill_value=0, overwrite=True))
    for index, where in blocks.items():
        data = step("relabel: read", lambda where=where: np.asarray(array[where]))
        labels, count = step("relabel: label", label_block, data, connectivity=26)
        values = step("relabel: remap", relabel_block, labels, block_table(lut, offsets[index], count))
        step("relabel: write", writer.__setitem__, where, values)
    return {name: round(seconds, 3) for name, seconds in split.items()}


def measure(command: list[str], env: dict, timeout: float) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _server(work: Path, configs: Path, env: dict) -> subprocess.Popen:
    """A Prefect server and the results database, as ``benchmarks/run.py`` starts them."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run import start_server

    return start_server(work, configs, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512, help="as benchmarks/run.py: 512 -> a 256x1024x1024 uint8 mask")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", help="another checkout (with its .venv) to run as tierflow-label-before")
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--work", help="keep inputs here (default: a temporary folder, removed)")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--one", nargs=4, metavar=("NAME", "MASK", "WORK", "CONFIGS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        name, mask, work, configs = args.one
        print(json.dumps(run_one(name, mask, Path(work), configs)))
        return
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="tierflow-label-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    mask = work / f"mask{args.size_mib}.zarr"
    if not (mask / "zarr.json").exists():
        print(f"making {mask}: {make_mask(mask, args.size_mib)} uint8", flush=True)
    if args.profile:
        print(json.dumps(profile(str(mask), work), indent=1))
        return
    names = ["scipy-label", "cc3d-label", "tierflow-label", *(["tierflow-label-before"] if args.before else []), "read-mask",
             "write-labels"]
    report(compare([n for n in names if args.only is None or n in args.only], mask, work, args), args.rounds)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


def compare(names: list[str], mask: Path, work: Path, args: argparse.Namespace) -> dict[str, list[dict]]:
    """Every contender once per round, the order rotated each round; their results by name."""
    configs = work / "configs"
    shutil.rmtree(configs, ignore_errors=True)
    configs.mkdir()
    for default in (ROOT / "configs").glob("*.def.toml"):
        shutil.copy(default, configs / default.name)
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING")
    commands = {name: [sys.executable, __file__] for name in names}
    if args.before:
        commands["tierflow-label-before"] = [str(Path(args.before) / ".venv/bin/python"), __file__]
    server = _server(work, configs, env)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    try:
        for round_ in range(args.rounds):
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:
                runs[name].append(measure([*commands[name], "--one", name, str(mask), str(work), str(configs)], env, args.timeout))
                print(f"  round {round_ + 1} {name:24s} {json.dumps(runs[name][-1])}", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
        subprocess.run([str(Path(sys.executable).with_name("tierflow")), "--config", str(configs), "db", "stop"], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return runs


def report(runs: dict[str, list[dict]], rounds: int) -> None:
    print(f"\nmedians of {rounds} (load average now {os.getloadavg()[0]:.1f}):")
    medians = {}
    for name, results in runs.items():
        ok = [r for r in results if "error" not in r]
        medians[name] = {key: round(statistics.median(r[key] for r in ok), 3) for key in ok[0]} if ok else results[-1]
        print(f"  {name:24s} {json.dumps(medians[name])}")
    if medians.get("scipy-label", {}).get("wall"):
        for name in ("tierflow-label", "tierflow-label-before", "cc3d-label"):
            if medians.get(name, {}).get("wall"):
                print(f"  {name} / scipy-label: {medians[name]['wall'] / medians['scipy-label']['wall']:.2f}x")


if __name__ == "__main__":
    main()
