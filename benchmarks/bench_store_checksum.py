"""Read speed of an activation store with and without its crc32c checksum, same data, one run.

    python benchmarks/bench_store_checksum.py [--images 1024] [--codec none|zstd|blosc-lz4] [--quick]

Three copies of one seeded float16 array (images, 256 tokens, 384 dims), chunked by 32
images like the default config, are read whole, chunk-aligned block by block (as the
training loader reads), from the page cache (a first untimed pass warms it):

- ``plain``: no checksum codec, opened with plain Zarr (usae before ``usae-store/2``);
- ``crc32c_zarr``: the checksum codec, opened with plain Zarr (Zarr checks it on decode);
- ``crc32c_usae``: the checksum codec, opened with ``open_store`` (``CheckedStore`` also
  checks it, to name the chunk, and refuses missing chunks): what usae reads.

Each variant is timed twice: raw reads of every chunk (``read``), and one epoch of the
training loader over it (``loader``: ``TokenLoader``, 4 read threads, shuffling buffers of
8 chunks, 4096-token batches), which is what training waits for when it waits for data.
Rounds interleave the variants; each variant's time is its median round, wall and CPU
(CPU time, summed over threads, is the cost itself and varies less on a shared machine).
Prints GB/s and the ratios to ``plain`` and writes them to ``benchmarks/results/store_checksum[_<codec>][_quick].json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from usae.activations.loader import TokenLoader
from usae.activations.sources import TokenSource
from usae.activations.store import (WRITE_CONFIG, ChunkWriter, atomic_store, base_attrs, compressors, create_array,
                                    open_store)

TOKENS, D, CHUNK = 256, 384, 32


def write(path: Path, data: np.ndarray, codec: str, checksum: bool) -> None:
    with atomic_store(path) as group:
        group.attrs.update(base_attrs(stage="prepare"))
        if checksum:
            array = create_array(group, "tokens", data.shape, dtype="float16", chunk_rows=CHUNK, compressor=codec)
        else:  # the same chain without its last codec, the checksum
            array = group.create_array("tokens", shape=data.shape, chunks=(CHUNK, TOKENS, D), dtype="float16",
                                       compressors=compressors(codec)[:-1], fill_value=0, config=WRITE_CONFIG)
        writer = ChunkWriter(array)
        writer.write(data)
        writer.close()


def read_all(array: zarr.Array) -> tuple[float, float]:
    """Wall and CPU seconds (all threads of the process: Zarr decodes on its own) to read every chunk."""
    wall, cpu = time.perf_counter(), time.process_time()
    for lo in range(0, array.shape[0], CHUNK):
        array[lo:lo + CHUNK]
    return time.perf_counter() - wall, time.process_time() - cpu


def load_epoch(array: zarr.Array) -> tuple[float, float]:
    loader = TokenLoader({"m": TokenSource("m", array, chunk_rows=CHUNK)}, batch_tokens=4096,
                         buffer_tokens=8 * CHUNK * TOKENS, seed=0, read_threads=4)  # as its results were measured
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in itertools.islice(loader.batches(), loader.steps_per_epoch):
        pass
    return time.perf_counter() - wall, time.process_time() - cpu


def summary(times: dict[str, list[tuple[float, float]]], n_bytes: int) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds per variant, wall GB/s, and both as ratios to ``plain``."""
    wall = {k: float(np.median([w for w, _ in v])) for k, v in times.items()}
    cpu = {k: float(np.median([c for _, c in v])) for k, v in times.items()}
    return {"seconds": wall, "cpu_seconds": cpu, "gb_per_s": {k: n_bytes / 1e9 / t for k, t in wall.items()},
            "ratio_to_plain": {k: t / wall["plain"] for k, t in wall.items()},
            "cpu_ratio_to_plain": {k: t / cpu["plain"] for k, t in cpu.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--codec", default="none", choices=["none", "zstd", "blosc-lz4"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="128 images, 3 rounds")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    n, rounds = (128, 3) if args.quick else (args.images, args.rounds)
    data = np.random.default_rng(0).standard_normal((n, TOKENS, D), dtype=np.float32).astype(np.float16)
    with tempfile.TemporaryDirectory() as tmp:
        for name, checksum in [("plain", False), ("crc32c", True)]:
            write(Path(tmp) / f"{name}.zarr", data, args.codec, checksum)
        arrays = {"plain": zarr.open_group(Path(tmp) / "plain.zarr", mode="r")["tokens"],
                  "crc32c_zarr": zarr.open_group(Path(tmp) / "crc32c.zarr", mode="r")["tokens"],
                  "crc32c_usae": open_store(Path(tmp) / "crc32c.zarr")["tokens"]}
        times: dict[str, dict[str, list[tuple[float, float]]]] = {m: {k: [] for k in arrays} for m in ("read", "loader")}
        for a in arrays.values():
            read_all(a)  # warm the page cache and Zarr's metadata
        for _ in range(rounds):
            for name, array in arrays.items():
                times["read"][name].append(read_all(array))
                times["loader"][name].append(load_epoch(array))
    result = {"images": n, "codec": args.codec, "bytes": int(data.nbytes), "rounds": rounds,
              **{mode: summary(t, data.nbytes) for mode, t in times.items()}}
    for mode in times:
        for k, ratio in result[mode]["ratio_to_plain"].items():
            print(f"{mode:6s} {k:12s} {result[mode]['gb_per_s'][k]:6.2f} GB/s   time x{ratio:.3f}, "
                  f"CPU time x{result[mode]['cpu_ratio_to_plain'][k]:.3f} of plain")
    name = "store_checksum" + ("" if args.codec == "none" else f"_{args.codec}") + ("_quick" if args.quick else "")
    out = args.out or Path("benchmarks/results") / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
