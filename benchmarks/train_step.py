"""Training throughput of AI-KD (images/s) for the default settings and variants.

Usage: python benchmarks/train_step.py [--images 448] [--batch 32] [--threads 2 1]
       [--out benchmarks/results/train_step.json]

Every scenario runs the real ``train_distill`` loop (DataLoader worker, jitter, teacher,
student forward/backward, SGD, SWA) on the same LFW train-split images with random labels;
its speed is the median images/s over the optimizer steps after two warm-up steps. Also
measured: the data pipeline alone, teacher inference (what a cache saves), the up-front
image check, and the projected wall time of one default run on the demo data (LFW + YTF
train splits), which is what the defaults in aikd/distill/config.py were sized by.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from aikd.distill.config import DistillConfig
from aikd.distill.data import (
    DistillDataset,
    EpochStreamSampler,
    collate,
    filter_readable,
    load_rows,
)
from aikd.distill.model import build_models, to_channels_last
from aikd.distill.teacher import teacher_embed_rows
from aikd.distill.train import train_distill
from aikd.faces import to_float_input

REPO = Path(__file__).resolve().parents[1]
DATASETS = {
    "lfw": (REPO / "data/manifests/lfw.parquet", REPO / "data/landmarks/reference/lfw.parquet"),
    "ytf": (REPO / "data/manifests/ytf.parquet", REPO / "data/landmarks/reference/ytf.parquet"),
}


def rows_of(split: str) -> pd.DataFrame:
    frames = []
    for manifest, landmarks in DATASETS.values():
        r = load_rows(manifest, landmarks, split)
        r["root"] = [str((REPO / x).resolve()) for x in r["root"]]
        frames.append(r)
    return pd.concat(frames, ignore_index=True)


def steady_ips(history: pd.DataFrame) -> float:
    """Median images/s after two warm-up steps (kernel selection, worker start)."""
    values = history["images_per_s"].to_numpy()[2:]
    return float(np.median(values)) if values.size else float("nan")


def run_scenario(name: str, cfg: DistillConfig, train: pd.DataFrame, val: pd.DataFrame,
                 cache: dict[str, np.ndarray] | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = train_distill(cfg, train, val, tmp, teacher_cache=cache)
        wall = time.perf_counter() - t0
    ips = steady_ips(res.history)
    print(f"{name:>50}: {ips:6.1f} images/s  ({res.steps} steps, {wall:.0f} s incl. setup)")
    cpu = res.timings["train_cpu_s"]
    return {"images_per_s": round(ips, 2),
            # images per CPU-second of the trainer process: with one thread this is close
            # to the speed on an idle core, whatever else runs on the machine
            "images_per_cpu_s": round(res.steps * cfg.batch_size / cpu, 2) if cpu else None,
            "steps": res.steps, "wall_s": round(wall, 1),
            "trainable": cfg.trainable, "teacher": "cached" if cache else "online",
            "channels_last": cfg.channels_last, "batch_size": cfg.batch_size,
            "threads": cfg.torch_threads, "checkpoints": res.steps // cfg.checkpoint_every
            if cfg.checkpoint_every else 0,
            "timings": {k: round(v, 2) for k, v in res.timings.items()}}


def data_pipeline_ips(train: pd.DataFrame, cfg: DistillConfig, workers: int) -> float:
    ds = DistillDataset(train, template="dlib150", max_shift=cfg.max_shift,
                        units=cfg.jitter_units, seed=0)
    n_batches = len(ds) // cfg.batch_size
    sampler = EpochStreamSampler(len(ds), batch_size=cfg.batch_size, total_batches=n_batches)
    loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=collate)
    t0 = time.perf_counter()
    n = sum(len(b["index"]) for b in loader)
    return n / (time.perf_counter() - t0)


@torch.inference_mode()
def teacher_ips(train: pd.DataFrame, batch: int, channels_last: bool) -> float:
    teacher, _ = build_models("dlib_resnet", None, "head", 0)
    if channels_last:
        to_channels_last(teacher)
    ds = DistillDataset(train.head(batch), template="dlib150", max_shift=0.0)
    x = to_float_input(collate([ds[i] for i in range(batch)])["x"], channels_last)
    teacher(x)
    times = []
    for _ in range(4):
        t0 = time.perf_counter()
        teacher(x)
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def student_step_ab(train: pd.DataFrame, batch: int, reps: int = 6) -> dict[str, float]:
    """Student forward+backward, images per CPU-second, the four variants interleaved.

    Interleaving and CPU time make this A/B robust to the load of a shared machine,
    unlike the whole-loop wall-clock rates, whose run-to-run noise was ~20 %.
    """
    ds = DistillDataset(train.head(batch), template="dlib150", max_shift=0.1, seed=0)
    b = collate([ds[(0, i)] for i in range(batch)])
    variants = {}
    for cl in (True, False):
        for spec in ("last_n_stages:3", "all"):
            _, student = build_models("dlib_resnet", None, spec, 0)
            variants[(cl, spec)] = to_channels_last(student) if cl else student
    times: dict[tuple[bool, str], list[float]] = {k: [] for k in variants}
    for _ in range(reps + 1):
        for (cl, spec), student in variants.items():
            x = to_float_input(b["x_hat"], cl)
            t0 = time.process_time()
            emb, q = student(x)
            (emb.sum() + q.sum()).backward()
            times[(cl, spec)].append(time.process_time() - t0)
            student.zero_grad()
    return {f"{spec} {'channels_last' if cl else 'contiguous'}":
            round(batch / statistics.median(v[1:]), 1) for (cl, spec), v in times.items()}


def project_default_run(result: dict[str, Any], threads: list[int], n_train_all: int,
                        n_val: int, n_val_sample: int) -> dict[str, Any]:
    """Projected wall time of one default run on the demo data, from the measurements
    (first thread count): what the defaults in DistillConfig were sized by."""
    d = DistillConfig()
    t = d.torch_threads if d.torch_threads in threads else threads[0]
    default = result["scenarios"][f"default (last_n_stages:3, cached teacher) | threads={t}"]
    n_train = n_train_all if d.train_subset is None else min(d.train_subset, n_train_all)
    steps = int(d.epochs * (n_train // d.batch_size))
    infer = result["components"][f"teacher_inference_images_per_s_threads{t}"]
    per_ckpt = default["timings"]["checkpoint_s"] / max(1, default["checkpoints"] + 1)
    per_val_image = default["timings"]["final_validation_s"] / n_val_sample
    projection = {
        "train_rows_available": n_train_all, "train_images_used": n_train,
        "val_images": n_val, "optimizer_steps": steps,
        "setup_s": round(default["timings"]["setup_s"] - n_val_sample / infer, 1),
        "image_check_s": round((n_train + n_val) / result["components"][
            "image_check_images_per_s"], 1),
        "val_teacher_embedding_s (no cache)": round(n_val / infer, 1),
        "train_s": round(steps * d.batch_size / default["images_per_s"], 1),
        "train_s_idle_core_estimate": round(steps * d.batch_size / default["images_per_cpu_s"],
                                            1),
        "checkpoint_s": round(per_ckpt * (steps // d.checkpoint_every + 1), 1),
        "final_validation_s": round(per_val_image * n_val, 1),
    }
    projection["threads"] = t
    projection["total_s"] = round(
        sum(v for k, v in projection.items() if k.endswith("_s") or "_s " in k), 1)
    return projection


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=448, help="train images per scenario")
    ap.add_argument("--batch", type=int, default=DistillConfig().batch_size)
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/train_step.json"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    train_all = rows_of("train")
    val_all = rows_of("val")
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(train_all), args.images, replace=False))
    train = train_all.iloc[pick].reset_index(drop=True)
    train["quality"] = rng.random(len(train))
    val = val_all.groupby("identity").head(2).head(32).reset_index(drop=True)
    val["quality"] = rng.random(len(val))

    # One checkpoint every 5 steps measures its cost; images/s excludes it by design.
    base = DistillConfig(train_subset=None, epochs=1.0, batch_size=args.batch,
                         checkpoint_every=5, progress=False, check_images=False,
                         warmup_steps=2)
    load_start = os.getloadavg()
    # Component timings use the default config's thread count (what a run would use).
    torch.set_num_threads(DistillConfig().torch_threads or torch.get_num_threads())
    result: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "images": len(train), "batch_size": args.batch,
        "component_threads": torch.get_num_threads(),
        "default_config": DistillConfig().to_dict(), "scenarios": {}, "components": {},
    }

    t0 = time.perf_counter()
    _, bad = filter_readable(train, threads=2)
    result["components"]["image_check_images_per_s"] = round(
        len(train) / (time.perf_counter() - t0), 1)
    for workers in (0, 1):
        result["components"][f"data_pipeline_images_per_s_workers{workers}"] = round(
            data_pipeline_ips(train, base, workers), 1)

    teacher, _ = build_models("dlib_resnet", None, "head", 0)
    to_channels_last(teacher)
    t0 = time.perf_counter()
    embeddings = teacher_embed_rows(teacher, train, batch_size=args.batch, workers=1)
    result["components"]["teacher_cache_build_images_per_s"] = round(
        len(train) / (time.perf_counter() - t0), 1)
    cache = dict(zip(train["path"], embeddings, strict=True))

    for threads in args.threads:
        torch.set_num_threads(threads)
        result["components"][f"teacher_inference_images_per_s_threads{threads}"] = round(
            teacher_ips(train, args.batch, True), 1)
        result["components"][f"teacher_inference_contiguous_images_per_s_threads{threads}"] = (
            round(teacher_ips(train, args.batch, False), 1))
        result["components"][f"student_step_images_per_cpu_s_threads{threads}"] = (
            student_step_ab(train, args.batch))
        scen = {
            "default (last_n_stages:3, cached teacher)": (base, cache),
            "default, online teacher": (base, None),
            "full backbone trainable, cached teacher": (base.replace(trainable="all"), cache),
            "full backbone trainable, online teacher": (base.replace(trainable="all"), None),
            "default, contiguous (no channels_last)": (base.replace(channels_last=False), cache),
            "baseline B (w=0, max_shift=0)": (base.replace(w=0.0, max_shift=0.0), None),
        }
        for name, (cfg, c) in scen.items():
            result["scenarios"][f"{name} | threads={threads}"] = run_scenario(
                f"{name} | t{threads}", cfg.replace(torch_threads=threads), train, val, c)

    projection = project_default_run(result, args.threads, len(train_all), len(val_all),
                                     len(val))
    result["projection_default_run"] = projection
    result["loadavg_start"] = [round(x, 2) for x in load_start]
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result["components"], indent=2))
    print(json.dumps(projection, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
