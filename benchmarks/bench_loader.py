"""Token loader: shuffled batches/s against the raw sequential read of the same store, start-up and stalls.

    python benchmarks/bench_loader.py [--images 768] [--repeats 3] [--parts rates first training] [--quick]

Three aligned stores as ``prepare`` writes them (float16, the paper's widths 384/768/768,
196 tokens an image, chunks of 32 images, uncompressed with checksums; seeded normal
values) in a temporary folder, read from the page cache (an untimed pass warms it). In one
run, with the loader of this tree ("after") and of ``--baseline`` ("before", the commit
before issue 14's loader changes, exported with ``git archive``):

1. **Read rate**, rounds interleaved, ``--repeats`` rounds:
   - ``raw_direct``: every chunk of every store in order, read and checksummed into a new
     array (``TokenSource.read``, which reads uncompressed chunk files directly);
   - ``raw_direct_kept``: the same, each chunk into its place in one array per store, which
     keeps what was read (as any buffer must; memory the cache cannot hold, where
     ``raw_direct`` rereads one chunk-sized array, cache-resident on a large L3);
   - ``raw_mapped_kept``: the loader's own passes over every byte, in order on one thread: each
     chunk file memory-mapped and checksummed (``TokenSource.read_pieces``, as the loader reads,
     the maps kept from round to round as a loader keeps its own from epoch to epoch), then
     copied into its place in one array per store (where the loader gathers rows);
   - ``raw_zarr``: the same chunks through Zarr (``open_store``: Zarr's decode, usae's checksum);
   - ``loader`` / ``loader_before``: ``TokenLoader`` (6,272-token batches, one read thread,
     before: the baseline's loader reading through Zarr as it did,
     ``buffer_tokens`` 65,536 as config.yaml and 1,048,576 as the default), the batches of
     3 epochs from ``batches()`` on, start-up included; tokens served per second.
   Ratios are tokens/s over a raw read's tokens/s, per round; CPU-time ratios beside them
   (on a shared machine CPU time is the steadier measure of the work).
2. **Time to first batch**: ``TokenLoader(...).batches()`` to its first batch, buffers of
   1,048,576 and 4,194,304 tokens (the paper preset), after and before.
3. **Training** (a subprocess per run, importing ``usae`` from this tree or the baseline's):
   ``train_from_stores`` at the paper's shapes (m 6144, K 32, AuxK 256, 6,272 tokens a step,
   one read thread, 2 torch threads). Time to first step = from the call (which opens the
   stores) to the first ``optimizer_step``. Per-step time = the interval between two steps'
   starts (the step and the wait for its batch); max/median over steps 1 on, and the max
   over the first three steps of each shuffle buffer (where a rebuild would show) over the
   median; and both again with each interval over the median of the steps with the same
   source (the paper scheme's steps cost more for a 768-wide source than a 384-wide one,
   which the plain max/median counts as a stall). Runs: buffers of 16 chunks (a rebuild every 16 steps; ``--steps`` steps), and the
   default 1,048,576-token buffer (3 steps; time to first step only), ``sae.decode`` sparse;
   after, also ``decode: auto`` (start-up times both decodings).

Prints ratios (min/median/max over repeats) and writes ``benchmarks/results/loader_cpu[_<parts>][_quick].json``
(the parts named only when not all three ran).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import importlib.util
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

# A script's own folder is first on sys.path: the shared helpers of the step benchmark.
from bench_train_step import describe_device, git_state, load_average, spread

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BASELINE = "e9efc61"  # the last commit before issue 14's loader and start-up changes
WIDTHS = {"dinov2": 384, "siglip": 768, "vit": 768}
TOKENS, CHUNK, BATCH = 196, 32, 6272
PARTS = ("rates", "first", "training")  # read rates, time to first batch, training runs: the docstring's 1-3


def write_stores(folder: Path, n_images: int) -> dict[str, Path]:
    """Aligned stores of ``n_images`` training images (and 32 validation images), seeded normal values."""
    from usae.activations.store import ChunkWriter, atomic_store, base_attrs, create_array, write_array

    rng = np.random.default_rng(0)
    paths = {}
    for name, d in WIDTHS.items():
        paths[name] = folder / f"{name}.zarr"
        with atomic_store(paths[name]) as group:
            group.attrs.update(base_attrs(stage="prepare", manifest_hash="bench", grid=[14, 14], d_model=d,
                                          model={"key": name}, standardization={"kind": "scalar", "mean": 0.0,
                                                                                "std": 1.0},
                                          finite_checked=True))  # as prepare's; normal draws are finite
            for split, n in [("train", n_images), ("val", CHUNK)]:
                sub = group.create_group(split)
                writer = ChunkWriter(create_array(sub, "tokens", (n, TOKENS, d), dtype="float16", chunk_rows=CHUNK))
                for lo in range(0, n, CHUNK):
                    rows = min(CHUNK, n - lo)
                    writer.write(rng.standard_normal((rows, TOKENS, d), dtype=np.float32).astype(np.float16))
                writer.close()
                write_array(sub, "rows", np.arange(n, dtype=np.int64))
                write_array(sub, "valid", np.ones(n, bool))
    return paths


def settle(timeout: float = 60.0) -> list[str]:
    """Wait until no loader thread of an earlier variant runs; return the names of any still running.

    A closed stream's threads may still be finishing a read (the "before" loader's read
    thread goes on reading its next buffer for about 0.1 s): timed beside the next variant,
    they would charge it their CPU time and slow it.
    """
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name.startswith("TokenLoader"):
            thread.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threading.enumerate() if t.name.startswith("TokenLoader") and t.is_alive()]


def timed(fn) -> tuple[float, float]:
    """Wall and CPU seconds (every thread of the process) of ``fn()``, once earlier loaders' threads ended."""
    if left := settle():
        print(f"warning: loader threads still running from an earlier variant: {left}")
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def old_loader_class():
    """``TokenLoader`` of the baseline commit, loaded from ``git show`` (it imports only ``TokenSource``)."""
    code = subprocess.run(["git", "show", f"{BASELINE}:usae/activations/loader.py"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("loader_before", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules["loader_before"] = module
    exec(compile(code, f"{BASELINE}:usae/activations/loader.py", "exec"), module.__dict__)
    return module.TokenLoader


def zarr_read_sources(sources: dict) -> dict:
    """Copies of ``sources`` whose ``read`` goes through Zarr, as before the direct chunk reads."""
    out = {}
    for name, source in sources.items():
        out[name] = copy.copy(source)
        out[name].read = lambda start, stop, s=source: np.asarray(s._array[start:stop]).reshape(
            stop - start, s.tokens_per_row, s.d_model)
    return out


def read_rates(paths: dict[str, Path], repeats: int, buffers: list[int]) -> dict:
    """Part 1: raw reads and loader epochs, interleaved rounds; per round tokens/s and ratios."""
    from usae.activations.chunk_files import MappedFiles
    from usae.activations.loader import TokenLoader
    from usae.activations.sources import open_aligned

    sources = open_aligned(paths)
    arrays = {n: s._array for n, s in sources.items()}
    n_rows = next(iter(sources.values())).n_rows
    before, old_sources = old_loader_class(), zarr_read_sources(sources)

    def raw_direct() -> None:
        for source in sources.values():
            for lo in range(0, n_rows, CHUNK):
                source.read(lo, min(lo + CHUNK, n_rows))

    kept = {n: np.empty(s.shape, s.dtype) for n, s in sources.items()}

    def raw_direct_kept() -> None:
        for name, source in sources.items():
            for lo in range(0, n_rows, CHUNK):
                source.read_into(lo, min(lo + CHUNK, n_rows), kept[name][lo:lo + CHUNK])

    maps = MappedFiles()

    def raw_mapped_kept() -> None:  # the loader's passes, in order on one thread: map + CRC, then one copy
        for name, source in sources.items():
            for lo in range(0, n_rows, CHUNK):
                for piece in source.read_pieces(lo, min(lo + CHUNK, n_rows), maps=maps):
                    np.copyto(kept[name][lo:lo + len(piece)], piece)

    def raw_zarr() -> None:
        for array in arrays.values():
            for lo in range(0, n_rows, CHUNK):
                array[lo:lo + CHUNK]

    def epochs(cls: type, buffer: int) -> int:
        loader = cls(sources if cls is TokenLoader else old_sources, BATCH, buffer, seed=0, read_threads=1)
        n = sum(loader.steps_in_epoch(e) for e in range(3))
        stream = loader.batches()
        for _ in itertools.islice(stream, n):
            pass
        stream.close()
        return n * BATCH

    raw_direct(), raw_zarr(), raw_direct_kept()  # warm the page cache (and fault ``kept`` in)
    variants = {"raw_direct": raw_direct, "raw_direct_kept": raw_direct_kept, "raw_mapped_kept": raw_mapped_kept,
                "raw_zarr": raw_zarr}
    served = {}
    for buffer in buffers:
        for label, cls in [("loader", TokenLoader), ("loader_before", before)]:
            name = f"{label}_{buffer}"
            served[name] = epochs(cls, buffer)
            variants[name] = lambda cls=cls, buffer=buffer: epochs(cls, buffer)
    rounds = []
    for _ in range(repeats):
        times = {name: timed(fn) for name, fn in variants.items()}
        tokens = {name: (served.get(name, n_rows * TOKENS), *t) for name, t in times.items()}
        rounds.append({name: {"tokens": n, "seconds": w, "cpu_seconds": c, "tokens_per_s": n / w,
                              "tokens_per_cpu_s": n / c} for name, (n, w, c) in tokens.items()})
    return {"rounds": rounds, "ratios": rate_ratios(rounds)}


def rate_ratios(rounds: list[dict]) -> dict:
    """min/median/max over rounds of each loader's tokens/s over each raw read's (wall and CPU)."""
    out = {}
    for name in rounds[0]:
        if name.startswith("raw"):
            continue
        for raw in ("raw_direct", "raw_direct_kept", "raw_mapped_kept", "raw_zarr"):
            for unit in ("tokens_per_s", "tokens_per_cpu_s"):
                values = [r[name][unit] / r[raw][unit] for r in rounds]
                out[f"{name} / {raw}" + (" (cpu)" if unit == "tokens_per_cpu_s" else "")] = spread(values)
    return out


def first_batches(paths: dict[str, Path], repeats: int, buffers: list[int]) -> dict:
    """Part 2: seconds from ``batches()`` to the first batch, after and before."""
    from usae.activations.loader import TokenLoader
    from usae.activations.sources import open_aligned

    sources = open_aligned(paths)
    out = {}
    for buffer in buffers:
        for label, cls, chosen in [("after", TokenLoader, sources),
                                   ("before", old_loader_class(), zarr_read_sources(sources))]:
            seconds = []
            for _ in range(repeats):
                loader = cls(chosen, BATCH, buffer, seed=0, read_threads=1)
                settle()
                start = time.perf_counter()
                stream = loader.batches()
                next(stream)
                seconds.append(time.perf_counter() - start)
                stream.close()
            out[f"{label}_{buffer}"] = spread(seconds)
    return out


def export_baseline(folder: Path) -> Path:
    """The baseline commit's ``usae`` package, for the training subprocesses."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", BASELINE, "usae"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def train_run(code_root: Path, paths: dict[str, Path], run_dir: Path, *, steps: int, buffer: int,
              decode: str) -> dict:
    """Part 3, one run in a subprocess importing ``usae`` from ``code_root``."""
    spec = {"stores": {n: str(p) for n, p in paths.items()}, "run_dir": str(run_dir), "steps": steps,
            "buffer": buffer, "decode": decode}
    env = {**os.environ, "PYTHONPATH": str(code_root), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, capture_output=True,
                          text=True, check=False, cwd=run_dir.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"training run failed ({code_root}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker(spec: dict) -> None:
    """In the subprocess: train, timing every step's start; print the timings as one JSON line."""
    import torch

    import usae.training.loop as loop
    from usae.activations.loader import TokenLoader
    from usae.activations.sources import open_aligned
    from usae.config import SAEConfig, TrainConfig

    torch.set_num_threads(2)
    starts: list[float] = []
    sources: list[str] = []
    step = loop.optimizer_step

    def timed_step(*args, **kwargs):
        starts.append(time.perf_counter())
        sources.append("+".join(args[3] if len(args) > 3 else kwargs["sources"]))
        return step(*args, **kwargs)
    loop.optimizer_step = timed_step
    sae = SAEConfig(n_latents=6144, k=32, aux_k=256, dead_tokens=10**7, decode=spec["decode"])
    cfg = TrainConfig(max_steps=spec["steps"], batch_tokens=BATCH, buffer_tokens=spec["buffer"], device="cpu",
                      read_threads=1, checkpoint_every=10**6, log_every=50)
    opened = time.perf_counter()
    loop.train_from_stores(spec["stores"], sae, cfg, spec["run_dir"])
    loader = TokenLoader(open_aligned({n: Path(p) for n, p in spec["stores"].items()}), BATCH, spec["buffer"], seed=0)
    print(json.dumps({"first_step_s": starts[0] - opened, "intervals": np.diff(starts).tolist(), "sources": sources,
                      "batch_in_buffer": [loader.locate(s)[2] for s in range(len(starts))]}))


def stall_figures(run: dict) -> dict:
    """max/median of the step intervals from step 1 on, overall and over each buffer's first three steps.

    With the paper scheme a step's cost depends on its source (encoder widths 384 and 768 here),
    so the ``*_same_source`` figures divide each interval by the median interval of steps with
    the same source: what is left is the loader's share, rebuilds included.
    """
    steps = run["intervals"][1:]
    median = statistics.median(steps)
    first = [t for t, j in zip(steps, run["batch_in_buffer"][1:]) if j < 3]
    figures = {"median_s": median, "max_over_median": max(steps) / median,
               "rebuild_max_over_median": max(first) / median if first else None}
    if "sources" in run:
        by_source = {}
        for t, source in zip(steps, run["sources"][1:]):
            by_source.setdefault(source, []).append(t)
        medians = {source: statistics.median(ts) for source, ts in by_source.items()}
        relative = [t / medians[source] for t, source in zip(steps, run["sources"][1:])]
        first_rel = [r for r, j in zip(relative, run["batch_in_buffer"][1:]) if j < 3]
        figures.update(max_over_same_source_median=max(relative),
                       rebuild_max_over_same_source_median=max(first_rel) if first_rel else None)
    return figures


def training(paths: dict[str, Path], folder: Path, repeats: int, steps: int) -> dict:
    before_root = export_baseline(folder / "before")
    rebuild = CHUNK * TOKENS * 16
    variants = [("after", ROOT, rebuild, steps, "sparse"), ("before", before_root, rebuild, steps, "sparse"),
                ("after", ROOT, 2**20, 3, "sparse"), ("before", before_root, 2**20, 3, "sparse"),
                ("after", ROOT, 2**20, 3, "auto")]
    runs: dict[str, list] = {}
    for r in range(repeats):
        for label, root, buffer, n, decode in variants:
            name = f"{label}_buffer{buffer}_{decode}"
            run = train_run(root, paths, folder / f"run_{name}_{r}", steps=n, buffer=buffer, decode=decode)
            runs.setdefault(name, []).append({**run, **(stall_figures(run) if n > 3 else {})})
            print(f"  {name} round {r}: first step {run['first_step_s']:.2f} s"
                  + (f", max/median {runs[name][-1]['max_over_median']:.2f}, rebuilds over the same source's "
                     f"median {runs[name][-1]['rebuild_max_over_same_source_median']:.2f}" if n > 3 else ""),
                  flush=True)
    summary = {name: {key: spread([run[key] for run in rs]) for key in
                      ("first_step_s", "max_over_median", "rebuild_max_over_median", "max_over_same_source_median",
                       "rebuild_max_over_same_source_median", "median_s") if key in rs[0]}
               for name, rs in runs.items()}
    return {"runs": runs, "summary": summary}


def result_name(parts: list[str], quick: bool) -> str:
    """``loader_cpu[_<parts>][_quick].json``: a run of some parts never overwrites the figures of a full run."""
    chosen = [p for p in PARTS if p in parts]
    named = "" if chosen == list(PARTS) else "_" + "_".join(chosen)
    return f"loader_cpu{named}{'_quick' if quick else ''}.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=48, help="steps of the training runs with rebuilds")
    parser.add_argument("--quick", action="store_true", help="256 images, 2 repeats, 12 steps")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="what to measure (default: all; the JSON then lacks the others)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    images, repeats, steps = (256, 2, 12) if args.quick else (args.images, args.repeats, args.steps)
    load = load_average()
    if load is not None and load > 0.25 * (os.cpu_count() or 1):
        print(f"warning: load average {load:.2f} on {os.cpu_count()} cores; other processes will skew the timings")
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_stores(Path(tmp), images)
        rates = first = train = None
        if "rates" in args.parts:
            rates = read_rates(paths, repeats, [65_536, 2**20])
            for name, s in rates["ratios"].items():
                print(f"{name:48s} min {s['min']:.2f}  median {s['median']:.2f}  max {s['max']:.2f}")
        if "first" in args.parts:
            first = first_batches(paths, repeats, [2**20, 2**22])
            for name, s in first.items():
                print(f"first batch {name:20s} median {s['median']:.3f} s (min {s['min']:.3f}, max {s['max']:.3f})")
        if "training" in args.parts:
            train = training(paths, Path(tmp), repeats, steps)
            for name, figures in train["summary"].items():
                print(f"train {name:32s} " + ", ".join(f"{k} median {v['median']:.2f} [{v['min']:.2f}, "
                                                      f"{v['max']:.2f}]" for k, v in figures.items()))
    result = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.machine(),
              "cpu": describe_device(torch.device("cpu")), "parts": args.parts, "cores": os.cpu_count(),
              "images": images, "repeats": repeats, "batch_tokens": BATCH,
              "widths": WIDTHS, "baseline": BASELINE, "git": git_state(),
              "load_average_1min": {"before": load, "after": load_average()}, "read_rates": rates,
              "first_batch_s": first, "training": train}
    out = args.out or HERE / "results" / result_name(args.parts, args.quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
