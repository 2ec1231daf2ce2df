"""zarr codec paths side by side: which pipeline, codec and thread settings read and write fastest.

    .venv/bin/python benchmarks/codecs.py [--size-mib 512] [--repeat 3] [--out benchmarks/results-codecs.json]

On 2 cores the codec, not the disk or the arithmetic, bounds a block-wise op; this measures, on a
uint16 volume like ``benchmarks/run.py``'s (chunks 64x256x256, zstd level 3 input):

1. zarr-python's default codec pipeline against ``zarrs`` (its pipeline in Rust): read and
   write the whole array in one call, and block by block (one chunk per call over 2 threads, as
   tierflow's block tasks do), and a block-wise copy (what tierflow's ``convert`` op does);
2. output codecs (zstd 1 and 3, blosc zstd/lz4 with byte or bit shuffle): block-wise write
   time and compression ratio;
3. sharded output (shards of 2x2x2 chunks) against unsharded;
4. thread settings: zarr's ``async.concurrency`` and zarrs' ``threading.max_workers``.

Every measurement runs in its own process (this script re-invoked with ``--one``); the cases are
interleaved round by round so that other load hits them alike, and medians are reported. Prints
a table and writes the figures as JSON.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import CHUNKS, shape_for  # noqa: E402

ZARRS = "zarrs.ZarrsCodecPipeline"
DEFAULT = "zarr.core.codec_pipeline.BatchedCodecPipeline"


def make_input(work: Path, size_mib: int) -> str:
    """The benchmark image of ``run.py`` (smooth blobs plus noise, zstd level 3), without its mask."""
    import zarr
    from scipy import ndimage
    from zarr.codecs import ZstdCodec

    shape = shape_for(size_mib)
    rng = np.random.default_rng(0)
    path = str(work / "image.zarr")
    image = zarr.create_array(path, shape=shape, chunks=CHUNKS, dtype="uint16", compressors=[ZstdCodec(level=3)])
    coarse = rng.random(tuple(-(-s // 8) for s in shape)).astype(np.float32)
    for z0 in range(0, shape[0], CHUNKS[0]):
        z1 = min(shape[0], z0 + CHUNKS[0])
        blobs = ndimage.zoom(coarse[z0 // 8 : -(-z1 // 8)], 8, order=1)[: z1 - z0, : shape[1], : shape[2]]
        image[z0:z1] = (blobs * 3000 + rng.integers(0, 1000, (z1 - z0, *shape[1:]))).astype(np.uint16)
    return path


def compressors(codec: str) -> list:
    from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

    if codec.startswith("zstd"):
        return [ZstdCodec(level=int(codec[4:]))]
    cname, shuffle = codec.split("-")[1:]  # blosc-<cname>-<byte|bit|no>
    mode = {"byte": BloscShuffle.shuffle, "bit": BloscShuffle.bitshuffle, "no": BloscShuffle.noshuffle}[shuffle]
    return [BloscCodec(cname=cname, clevel=5 if cname == "lz4" else 3, shuffle=mode)]


def folder_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# -- one measurement (in a child process) ----------------------------------------------------


def blocks_of(shape: tuple[int, ...], step: tuple[int, ...]) -> list[tuple[slice, ...]]:
    return [(slice(z, z + step[0]), slice(y, y + step[1]), slice(x, x + step[2]))
            for z in range(0, shape[0], step[0]) for y in range(0, shape[1], step[1]) for x in range(0, shape[2], step[2])]


def run_one(case: dict, source: str, work: Path) -> dict:
    """Time ``case["op"]`` with the case's pipeline, codec and threads: ``read``/``write`` the
    whole array in one call, ``read-blocks``/``write-blocks``/``copy`` one block (a chunk, or a
    shard) per call, ``workers`` (2) blocks at a time, as tierflow's block tasks do."""
    import zarr

    settings = {"codec_pipeline.path": ZARRS if case["pipeline"] == "zarrs" else DEFAULT}
    settings.update(case.get("config", {}))
    zarr.config.set(settings)
    out = str(work / f"out-{os.getpid()}.zarr")
    op = case["op"]
    data = zarr.open_array(source, mode="r")[:] if op.startswith("write") else None  # untimed
    source_array = zarr.open_array(source, mode="r")
    target = None
    if not op.startswith("read"):
        target = zarr.create_array(out, shape=source_array.shape, chunks=CHUNKS, dtype="uint16", shards=case.get("shards"),
                                   compressors=compressors(case.get("codec", "zstd3")), overwrite=True,
                                   config={"write_empty_chunks": True})
    blocks = blocks_of(source_array.shape, tuple(case.get("shards") or CHUNKS))

    def one_block(block: tuple[slice, ...]) -> None:
        if op == "read-blocks":
            source_array[block]
        elif op == "write-blocks":
            target[block] = data[block]
        else:
            target[block] = source_array[block]

    started, cpu_started = time.perf_counter(), time.process_time()
    if op == "read":
        source_array[:]
    elif op == "write":
        target[:] = data
    else:
        with ThreadPoolExecutor(int(case.get("workers", 2))) as pool:
            list(pool.map(one_block, blocks))
    result = {"wall": time.perf_counter() - started, "cpu": time.process_time() - cpu_started}
    if target is not None:
        result["bytes"] = folder_bytes(out)
        shutil.rmtree(out, ignore_errors=True)
    return result


# -- parent ------------------------------------------------------------------------------------


def cases() -> dict[str, dict]:
    """Every case by name: (1) pipelines, (2) codecs, (3) sharding, (4) threads."""
    table: dict[str, dict] = {}
    for op in ("read", "read-blocks", "write", "write-blocks", "copy"):
        for pipeline in ("zarr", "zarrs"):
            table[f"{op} zstd3 {pipeline}"] = {"group": "pipeline", "op": op, "pipeline": pipeline, "codec": "zstd3"}
    for codec in ("zstd1", "blosc-zstd-byte", "blosc-lz4-byte", "blosc-lz4-bit"):
        for pipeline in ("zarr", "zarrs"):
            table[f"write-blocks {codec} {pipeline}"] = {"group": "codec", "op": "write-blocks", "pipeline": pipeline, "codec": codec}
    for pipeline in ("zarr", "zarrs"):
        table[f"copy zstd3 sharded {pipeline}"] = {"group": "shards", "op": "copy", "pipeline": pipeline, "codec": "zstd3",
                                                   "shards": [2 * c for c in CHUNKS]}
    one_thread = {"threading.max_workers": 1}
    table["copy zstd3 zarr concurrency=2"] = {"group": "threads", "op": "copy", "pipeline": "zarr", "config": {"async.concurrency": 2}}
    table["copy zstd3 zarrs max_workers=1"] = {"group": "threads", "op": "copy", "pipeline": "zarrs", "config": one_thread}
    table["copy zstd3 zarrs 1 block at a time"] = {"group": "threads", "op": "copy", "pipeline": "zarrs", "workers": 1}
    table["read zstd3 zarrs max_workers=1"] = {"group": "threads", "op": "read", "pipeline": "zarrs", "config": one_thread}
    return table


def measure(name: str, case: dict, source: str, work: Path) -> dict:
    command = [sys.executable, __file__, "--one", json.dumps(case), "--source", source, "--work", str(work)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None, help="case groups: pipeline, codec, shards, threads")
    parser.add_argument("--out", default="benchmarks/results-codecs.json")
    parser.add_argument("--one")
    parser.add_argument("--source")
    parser.add_argument("--work")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one), args.source, Path(args.work))))
        return

    work = Path(tempfile.mkdtemp(prefix="tierflow-codecs-"))
    try:
        print(f"making a {args.size_mib} MiB input in {work} ...", flush=True)
        source = make_input(work, args.size_mib)
        table = {n: c for n, c in cases().items() if args.only is None or c["group"] in args.only}
        runs: dict[str, list[dict]] = {name: [] for name in table}
        for round_ in range(args.repeat):  # interleaved: every case once per round
            for name, case in table.items():
                runs[name].append(measure(name, case, source, work))
            print(f"round {round_ + 1}/{args.repeat} done; load {os.getloadavg()[0]:.2f}", flush=True)
        results = {name: summarise(runs[name], table[name], args.size_mib) for name in table}
        report(results)
        Path(args.out).write_text(json.dumps({"size_mib": args.size_mib, "shape": list(shape_for(args.size_mib)), "chunks": list(CHUNKS),
                                              "repeat": args.repeat, "load": os.getloadavg(), "results": results}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summarise(runs: list[dict], case: dict, size_mib: int) -> dict:
    ok = sorted((r for r in runs if "error" not in r), key=lambda r: r["wall"])
    if not ok:
        return {**case, "error": runs[-1].get("error")}
    median = ok[len(ok) // 2]
    summary = {**case, "wall": round(median["wall"], 3), "min": round(ok[0]["wall"], 3), "walls": [round(r["wall"], 3) for r in ok],
               "mib_per_s": round(size_mib / median["wall"], 1)}
    cpus = sorted(r["cpu"] for r in ok if "cpu" in r)
    if cpus:  # CPU seconds of the process (all threads): less sensitive to other load than wall time
        summary["cpu"] = round(cpus[len(cpus) // 2], 3)
    if "bytes" in median:
        summary["ratio"] = round(size_mib * 2**20 / median["bytes"], 3)
    return summary


def report(results: dict) -> None:
    print(f"\n{'case':40s} {'median s':>8s} {'min s':>6s} {'cpu s':>6s} {'MiB/s':>6s} {'ratio':>6s}  walls")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:40s} error: {r['error']}")
            continue
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
        cpu = f"{r['cpu']:.2f}" if "cpu" in r else ""
        print(f"{name:40s} {r['wall']:8.2f} {r['min']:6.2f} {cpu:>6s} {r['mib_per_s']:6.0f} {ratio:>6s}  {r['walls']}")
    for op in ("read", "read-blocks", "write", "write-blocks", "copy"):
        a, b = results.get(f"{op} zstd3 zarr", {}), results.get(f"{op} zstd3 zarrs", {})
        if a.get("wall") and b.get("wall"):
            print(f"  {op}: zarr-python / zarrs = {a['wall'] / b['wall']:.2f}x (median), {a['min'] / b['min']:.2f}x (min)")


if __name__ == "__main__":
    main()
