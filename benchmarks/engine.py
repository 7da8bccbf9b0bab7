"""Engine scaling: the embed of N LFW images on the local engine and on Ray, in one run.

Times ``aikd.embed.embed_table`` (decode + align + dlib ResNet, the embed stage's work) on
the same N images with

* ``local_t1``: the local engine, 1 torch thread, decoding in the same process;
* ``local_t2``: the local engine as the embed stage runs it by default (params.yaml
  ``embed``: 2 torch threads, 1 decoding process);
* ``ray_w1`` / ``ray_w2``: the Ray engine (a Ray started here, on this machine) with 1 or
  2 actors of one thread each, chunks of ``--chunk`` images. The time counts the actors'
  start (loading the model) but not ``ray.init``, which a cluster has paid already
  (reported apart as ``ray_init_s``).

Writes images/s of each, ``ray_w2 / local_t2`` (what 2 Ray workers give against the local
engine on 2 threads), the overhead per image of Ray with one worker against the local
engine on one thread (``(t_ray_w1 - t_local_t1) / N``), the max abs difference of the
embeddings between the engines, and a machine note (CPUs, load average before and after,
versions): a loaded machine makes every ratio meaningless, so read the load first.

Where Ray's time goes (``ray_fixed_cost``): the wall time of the same Ray Data pipeline
whose actors do nothing (``noop_pipeline_s``: the fixed price of any Ray Data run here,
actor and executor start), and the steady-state images/s of 2 Ray workers, from the
arrival times of the chunks after each worker's first one (``ray_w2_steady``); with them,
the number of images from which 2 Ray workers would overtake the local engine on 2 threads
(``break_even_images``; null when their steady rate is not higher).

The real measurement (1,000 images; run it on an otherwise idle machine):

    python benchmarks/engine.py --images 1000

Smoke run (checks the script, numbers of no value): ``--images 50 --out /tmp/engine.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from aikd.embed import _ray_embedder, embed_table
from aikd.engine import EngineSettings, connect, ray_map_chunks
from aikd.models.registry import load_backbone

RESULTS = Path(__file__).parent / "results" / "engine.json"
LFW = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "lfw").resolve()


def lfw_rows(n: int) -> pd.DataFrame:
    """``n`` LFW images spread over the sorted reference table, with their landmarks."""
    ref = pd.read_csv(LFW / "landmarks_5pt.csv").sort_values("path").reset_index(drop=True)
    if n > len(ref):
        raise SystemExit(f"--images {n}: LFW has {len(ref)}")
    picked = ref.iloc[np.linspace(0, len(ref) - 1, n).round().astype(int)]
    return picked.assign(root=str(LFW)).reset_index(drop=True)


def timed_embed(model: torch.nn.Module, rows: pd.DataFrame, work: Path, name: str, *,
                threads: int, workers: int, batch: int,
                engine: EngineSettings | None = None) -> tuple[float, np.ndarray]:
    """Seconds of one embed_table call (a fresh output, no shards) and its embeddings."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    _, vectors, failed = embed_table(model, rows, work / f"{name}.parquet", batch_size=batch,
                                     workers=workers, progress=False, engine=engine)
    seconds = time.perf_counter() - t0
    if len(failed):
        raise SystemExit(f"{name}: {len(failed)} images failed, e.g. {failed.iloc[0].tolist()}")
    print(f"{name}: {len(rows)} images in {seconds:.1f} s ({len(rows) / seconds:.1f} img/s)",
          flush=True)
    return seconds, vectors


def _passthrough(rows: pd.DataFrame) -> pd.DataFrame:
    return rows


def _passthrough_factory() -> Callable[[pd.DataFrame], pd.DataFrame]:
    return _passthrough


def noop_pipeline_seconds(workers: int) -> float:
    """Wall time of a Ray Data pipeline of the engine's shape (4 chunks, ``workers`` actors)
    whose chunk function returns its rows: what any Ray engine run pays before any work."""
    chunks = [(k, pd.DataFrame({"x": np.arange(8)})) for k in range(4)]
    settings = EngineSettings(kind="ray", num_workers=workers, batch_size=8, threads=1)
    t0 = time.perf_counter()
    for _ in ray_map_chunks(chunks, _passthrough_factory, settings, desc="noop",
                            progress=False):
        pass
    return time.perf_counter() - t0


def ray_steady_rate(model: torch.nn.Module, rows: pd.DataFrame, *, workers: int, chunk: int,
                    batch: int) -> dict[str, float]:
    """Images/s of ``workers`` Ray actors once each has delivered its first chunk (model
    loaded, kernels warm): the images of the later chunks over the time they took."""
    settings = EngineSettings(kind="ray", num_workers=workers, batch_size=chunk, threads=1)
    chunks = [(k, rows.iloc[lo:lo + chunk]) for k, lo in enumerate(range(0, len(rows), chunk))]
    if len(chunks) <= workers + 1:
        raise SystemExit(f"--images {len(rows)}: too few chunks of {chunk} for a steady rate")
    t0 = time.perf_counter()
    arrivals = []
    for _, table in ray_map_chunks(chunks, partial(_ray_embedder, model, batch), settings,
                                   desc="steady", progress=False):
        arrivals.append((time.perf_counter() - t0, table.num_rows))
    start = arrivals[workers - 1][0]
    later = sum(n for _, n in arrivals[workers:])
    return {"total_s": round(arrivals[-1][0], 2), "first_chunks_done_s": round(start, 2),
            "images_per_s": round(later / (arrivals[-1][0] - start), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64, help="network batch (embed.batch_size)")
    ap.add_argument("--chunk", type=int, default=128,
                    help="images per Ray task and shard (engine.batch_size)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import ray

    rows = lfw_rows(args.images)
    model = load_backbone("dlib_resnet").eval().to(memory_format=torch.channels_last)
    load_before = os.getloadavg()
    t: dict[str, float] = {}
    v: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t["local_t1"], v["local_t1"] = timed_embed(model, rows, work, "local_t1", threads=1,
                                                   workers=0, batch=args.batch)
        t["local_t2"], v["local_t2"] = timed_embed(model, rows, work, "local_t2", threads=2,
                                                   workers=1, batch=args.batch)
        t0 = time.perf_counter()
        connect(EngineSettings(kind="ray", num_workers=2, threads=1))
        ray_init_s = time.perf_counter() - t0
        for w in (1, 2):
            engine = EngineSettings(kind="ray", num_workers=w, batch_size=args.chunk,
                                    threads=1)
            t[f"ray_w{w}"], v[f"ray_w{w}"] = timed_embed(
                model, rows, work, f"ray_w{w}", threads=1, workers=0, batch=args.batch,
                engine=engine)
        noop_s = noop_pipeline_seconds(2)
        steady = ray_steady_rate(model, rows, workers=2, chunk=args.chunk, batch=args.batch)
        ray_version = ray.__version__
        ray.shutdown()
    n = len(rows)
    # Ray's time for N images ~ fixed + N / steady rate; it overtakes the local engine on 2
    # threads (N / local rate) only if its steady rate is higher.
    r_local, r_ray = n / t["local_t2"], steady["images_per_s"]
    fixed = t["ray_w2"] - n / r_ray
    break_even = (int(round(fixed / (1 / r_local - 1 / r_ray))) if r_ray > r_local else None)
    result = {
        "images": n,
        "network_batch": args.batch,
        "ray_chunk": args.chunk,
        "images_per_s": {k: round(n / s, 2) for k, s in t.items()},
        "seconds": {k: round(s, 2) for k, s in t.items()},
        "ray_init_s": round(ray_init_s, 2),
        "ratio_ray_w2_vs_local_t2": round(t["local_t2"] / t["ray_w2"], 3),
        "ratio_ray_w2_vs_ray_w1": round(t["ray_w1"] / t["ray_w2"], 3),
        "ray_w1_overhead_ms_per_image_vs_local_t1": round(
            1000 * (t["ray_w1"] - t["local_t1"]) / n, 2),
        "ray_fixed_cost": {
            "noop_pipeline_s": round(noop_s, 2),
            "ray_w2_steady": steady,
            "local_t2_images_per_s": round(r_local, 2),
            "break_even_images": break_even,
        },
        "max_abs_diff_vs_local_t1": {
            k: float(np.abs(v[k] - v["local_t1"]).max()) for k in v if k != "local_t1"},
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1_5_15_before": [round(x, 2) for x in load_before],
            "load_avg_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ray": ray_version,
            "note": "ray times include the actors' start (model unpickled once per actor); "
                    "local_t2 is the embed stage's default (2 threads + 1 decoding process)",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
