"""AI-KD training speed: the previous default vs the new default, side by side.

Usage: python benchmarks/train_step.py [--data DIR] [--detector dlib] [--images 640]
       [--rounds 2] [--no-ddp] [--out benchmarks/results/train_step.json]

One run of this script measures, on the same machine and the same images (LFW + YTF
train-split rows with ``--detector`` landmarks from ``--data``, random labels, the teacher
cache built once as the DVC stage gets it from ``aikd.embed``):

* ``profile``: where one optimizer step's time goes (data wait, input conversion, the
  student's frozen forward, its trainable forward + loss, backward, clip + optimizer,
  SWA update) for both defaults, by phase and (torch.profiler) by operator;
* ``scenarios``: the real ``train_distill`` loop of the previous default (fp32, the
  frozen blocks run as part of the module, one process, one thread), the new default
  (``DistillConfig()``) and each factor on its own, in ``--rounds`` interleaved rounds;
  a scenario's speed is the median over rounds of its median images/s over the optimizer
  steps after two warm-up steps. ``speedup_vs_previous_default`` is new / previous.
  The two-process scenarios run under ``accelerate launch`` (gloo DDP, one thread and
  one DataLoader worker per process, batch 16 per process: the same global batch 32);
* ``agreement``: the same seeded run in fp32 and in the new default's precision, loss
  curves and final weights compared (bf16 must learn the same, not just run fast).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile

from aikd.distill.config import DistillConfig
from aikd.distill.data import load_rows
from aikd.distill.fast import frozen_blocks
from aikd.distill.model import build_models, to_channels_last
from aikd.distill.precision import choose_precision
from aikd.distill.prepare import prepare_run
from aikd.distill.teacher import teacher_embed_rows
from aikd.distill.train import default_threads, train_distill
from aikd.faces import to_float_input

REPO = Path(__file__).resolve().parents[1]
#: The settings that were the default before issue #14 part 4 (and are still those of
#: DistillConfig apart from these two keys): fp32, the frozen blocks inside the module.
PREVIOUS = dict(trainable="last_n_stages:3", precision="fp32", fuse_frozen=False,
                torch_threads=1, num_workers=1, batch_size=32, channels_last=True)
#: Benchmark-only settings on top of a scenario's config: one pass over the images, no
#: image check, a checkpoint every 5 steps (images/s excludes it by design).
BENCH = dict(train_subset=None, epochs=1.0, checkpoint_every=5, progress=False,
             check_images=False, warmup_steps=2)
#: Largest per-step difference allowed between the fp32 and the new default's loss
#: curves in ``agreement`` (256 images, 24 steps, losses 0.13-0.25). Measured under
#: load on 2026-12-01: 6.0e-3 for bf16 + prefix, 4.7e-3 for fp32 + prefix (a change of
#: float32-rounding size): the dynamics amplify any change to that level.
AGREEMENT_ATOL = 0.01


def rows_of(data: Path, detector: str, split: str) -> pd.DataFrame:
    """LFW + YTF rows of ``split`` with ``detector`` landmarks, roots made absolute."""
    frames = []
    for ds in ("lfw", "ytf"):
        r = load_rows(data / "manifests" / f"{ds}.parquet",
                      data / "landmarks" / detector / f"{ds}.parquet", split)
        r["root"] = [str((data.parent / x).resolve()) for x in r["root"]]
        frames.append(r)
    return pd.concat(frames, ignore_index=True)


def steady_ips(history: pd.DataFrame) -> float:
    """Median images/s after two warm-up steps (kernel selection, worker start)."""
    values = history["images_per_s"].to_numpy()[2:]
    return float(np.median(values)) if values.size else float("nan")


# --------------------------------------------------------------------------- profile


@contextlib.contextmanager
def _clock(times: dict[str, list[float]], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    times.setdefault(name, []).append(time.perf_counter() - t0)


def profile_steps(cfg: DistillConfig, train: pd.DataFrame, val: pd.DataFrame,
                  cache: dict[str, np.ndarray], steps: int = 10) -> dict[str, Any]:
    """Median seconds per optimizer step by phase (and ms per image in total), and the
    top operators of the same steps; the step is ``_train_step``'s, split into phases."""
    cfg = cfg.replace(epochs=float(np.ceil((steps + 2) * cfg.batch_size / len(train))))
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.torch_threads or default_threads())  # as train_distill does
    with contextlib.ExitStack() as restore, tempfile.TemporaryDirectory() as tmp:
        restore.callback(torch.set_num_threads, threads)
        run = prepare_run(cfg, train, val, Path(tmp), labels=None, teacher_cache=cache,
                          val_landmarks=None, resume=False, stop_after=None,
                          on_validation=None)
        student = run.accelerator.unwrap_model(run.student)
        bb = student.backbone
        times: dict[str, list[float]] = {}
        loader = iter(run.loader)
        frozen = frozen_blocks(bb)
        student.train()

        def step() -> None:
            with _clock(times, "data_wait"):
                batch = next(loader)
            with _clock(times, "input_to_float"):
                x = to_float_input(batch["x_hat"], cfg.channels_last)
            with run.autocast():
                with _clock(times, "student_frozen_forward"):
                    if student.prefix is not None:
                        h = student.prefix.features(x)
                        rest = list(bb.blocks)[student.prefix.n_blocks:]
                    else:
                        h = bb.stem(x)
                        for block in list(bb.blocks)[:frozen]:
                            h = block(h)
                        rest = list(bb.blocks)[frozen:]
                with _clock(times, "student_trainable_forward"):
                    for block in rest:
                        h = block(h)
                    e_hat = bb.embed_from_features(h.mean(dim=(2, 3)))
                    q_hat = student.head(e_hat).squeeze(-1)
            with _clock(times, "loss"):
                terms = run.loss_fn(e_hat, q_hat, batch["q"], batch["e"])
            with _clock(times, "backward"):
                terms.total.backward()
            with _clock(times, "clip_and_optimizer"):
                torch.nn.utils.clip_grad_norm_(run.trainable, cfg.clip_grad_norm)
                run.optimizer.step()
                run.optimizer.zero_grad(set_to_none=True)
            with _clock(times, "swa_update"):
                run.swa_model.update_parameters(student)

        for _ in range(2):  # warm-up (kernel selection, worker start): not measured
            step()
        times.clear()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        ops = prof.key_averages()
    phases = {k: round(statistics.median(v) * 1e3, 2) for k, v in times.items()}
    total = sum(phases.values())
    top = sorted(ops, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    op_total = sum(e.self_cpu_time_total for e in ops) or 1.0
    return {
        "ms_per_step": phases, "ms_per_step_total": round(total, 1),
        "images_per_s_from_phases": round(cfg.batch_size / total * 1e3, 1),
        "share": {k: round(v / total, 3) for k, v in phases.items()},
        "top_ops_self_cpu_share": {e.key: round(e.self_cpu_time_total / op_total, 3)
                                   for e in top},
    }


# --------------------------------------------------------------------------- scenarios


def run_scenario(cfg: DistillConfig, train: pd.DataFrame, val: pd.DataFrame,
                 cache: dict[str, np.ndarray]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = train_distill(cfg, train, val, tmp, teacher_cache=cache)
        wall = time.perf_counter() - t0
    cpu = res.timings["train_cpu_s"]
    return {"images_per_s": steady_ips(res.history), "steps": res.steps,
            "wall_s": wall, "train_cpu_s": cpu,
            "losses": res.history["loss"].tolist()}


def run_ddp(cfg: DistillConfig, work: Path) -> dict[str, Any]:
    """The same scenario as two processes under ``accelerate launch`` (gloo DDP)."""
    launcher = Path(sys.executable).with_name("accelerate")
    spec = work / "ddp_spec.json"
    out = work / "ddp_out.json"
    spec.write_text(json.dumps({"config": cfg.to_dict(), "work": str(work), "out": str(out)}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.perf_counter()
    proc = subprocess.run([str(launcher), "launch", "--config_file",
                           str(REPO / "configs/accelerate/cpu_2proc.yaml"), __file__,
                           "--ddp-worker", str(spec)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600)
    if proc.returncode != 0:
        rank0 = [line for line in proc.stderr.splitlines() if line.startswith("[rank0]")]
        raise RuntimeError("DDP scenario failed:\n" + "\n".join(rank0[-30:] or
                                                              [proc.stderr[-3000:]]))
    result = json.loads(out.read_text())
    result["wall_s"] = time.perf_counter() - t0  # includes the launch and imports
    return result


def ddp_worker(spec_path: str) -> None:
    """One process of :func:`run_ddp`: train on the rows the parent saved; rank 0 reports."""
    spec = json.loads(Path(spec_path).read_text())
    work = Path(spec["work"])
    train = pd.read_parquet(work / "train.parquet")
    val = pd.read_parquet(work / "val.parquet")
    emb = np.load(work / "cache.npy")
    cache = dict(zip(train["path"], emb, strict=True))
    cfg = DistillConfig.from_dict(spec["config"])
    res = train_distill(cfg, train, val, work / "ddp_run", teacher_cache=cache)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(spec["out"]).write_text(json.dumps({
            "images_per_s": steady_ips(res.history), "steps": res.steps,
            "train_cpu_s": res.timings["train_cpu_s"],
            "losses": res.history["loss"].tolist()}))


# --------------------------------------------------------------------------- agreement


def agreement(new: DistillConfig, train: pd.DataFrame, val: pd.DataFrame,
              cache: dict[str, np.ndarray], epochs: float) -> dict[str, Any]:
    """The same seeded run in fp32 (the previous path), in fp32 with the folded prefix
    (a float32-rounding-size change: how far the dynamics alone carry such a change) and
    in the new default: per-step losses, head weights and validation compared."""
    runs = {}
    for name, cfg in (("fp32", new.replace(precision="fp32", fuse_frozen=False)),
                      ("fp32_folded", new.replace(precision="fp32", fuse_frozen=True)),
                      ("new_default", new)):
        with tempfile.TemporaryDirectory() as tmp:
            # the recipe's warm-up, not the speed runs' 2 steps (whose lr 0.05 from step 3
            # on makes a loss spike of 1.4-1.7 at step 4 that any change moves)
            res = train_distill(cfg.replace(epochs=epochs, checkpoint_every=0,
                                            warmup_steps=DistillConfig().warmup_steps),
                                train, val, tmp, teacher_cache=cache)
            model = torch.load(Path(tmp) / "model.pt", weights_only=True)
        head = torch.cat([v.flatten() for v in model["head_state"].values()])
        runs[name] = (res, res.history["loss"].to_numpy(), head)
    ref_res, ref_loss, ref_head = runs["fp32"]
    out: dict[str, Any] = {"images": len(train), "steps": len(ref_loss), "epochs": epochs,
                           "lr": new.lr, "batch_size": new.batch_size,
                           "tolerance": AGREEMENT_ATOL,
                           "loss_fp32": [round(float(x), 5) for x in ref_loss],
                           "val_metrics_fp32": _rounded(ref_res.metrics)}
    for name in ("fp32_folded", "new_default"):
        res, loss, head = runs[name]
        diff = np.abs(loss - ref_loss)
        out[name] = {
            "loss": [round(float(x), 5) for x in loss],
            "max_abs_loss_diff_vs_fp32": round(float(diff.max()), 5),
            "mean_abs_loss_diff_vs_fp32": round(float(diff.mean()), 5),
            "mean_loss_last_third": round(float(loss[-len(loss) // 3:].mean()), 5),
            "head_weights_rel_diff_vs_fp32": round(float((head - ref_head).norm()
                                                         / ref_head.norm()), 4),
            "val_metrics": _rounded(res.metrics)}
    out["mean_loss_last_third_fp32"] = round(float(ref_loss[-len(ref_loss) // 3:].mean()), 5)
    out["agree"] = bool(out["new_default"]["max_abs_loss_diff_vs_fp32"] <= AGREEMENT_ATOL)
    return out


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in metrics.items() if np.isfinite(v)}


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO / "data",
                    help="folder with manifests/ and landmarks/<detector>/ (default: the "
                         "repository's DVC outputs)")
    ap.add_argument("--detector", default="dlib", help="training landmarks (dlib covers "
                    "every image; the DVC stage's training_detector)")
    ap.add_argument("--images", type=int, default=640, help="train images per scenario")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per scenario")
    ap.add_argument("--agreement-images", type=int, default=256)
    ap.add_argument("--agreement-epochs", type=float, default=3.0)
    ap.add_argument("--no-ddp", action="store_true", help="skip the two-process scenarios")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/train_step.json"))
    ap.add_argument("--ddp-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    if args.ddp_worker:
        ddp_worker(args.ddp_worker)
        return

    train_all = rows_of(args.data, args.detector, "train")
    val_all = rows_of(args.data, args.detector, "val")
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(train_all), args.images, replace=False))
    train = train_all.iloc[pick].reset_index(drop=True)
    train["quality"] = rng.random(len(train))
    val = val_all.groupby("identity").head(2).head(32).reset_index(drop=True)
    val["quality"] = rng.random(len(val))

    torch.set_num_threads(1)
    teacher, _ = build_models("dlib_resnet", None, "head", 0)
    to_channels_last(teacher)
    t0 = time.perf_counter()
    emb = teacher_embed_rows(teacher, train, batch_size=32, workers=1)
    cache_ips = len(train) / (time.perf_counter() - t0)
    cache = dict(zip(train["path"], emb, strict=True))

    # the default as it runs on this machine (precision auto: the faster one, timed)
    torch.set_num_threads(default_threads())  # as train_distill times it
    choice = choose_precision(DistillConfig().replace(**BENCH))
    torch.set_num_threads(1)
    new = DistillConfig().replace(**BENCH, precision=choice.precision)
    previous = DistillConfig(**{**PREVIOUS, **BENCH})
    load_start = os.getloadavg()
    result: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "cpu_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "data": {"detector": args.detector, "train_rows_available": len(train_all),
                 "images": len(train), "val_images": len(val)},
        "previous_default": {k: getattr(previous, k) for k in PREVIOUS},
        "new_default": {**{k: getattr(new, k) for k in (*PREVIOUS, "precision", "fuse_frozen")},
                        "torch_threads": new.torch_threads or default_threads()},
        "cpu_amx": bool(torch.cpu._is_amx_tile_supported()),
        "precision_choice": choice.to_dict(),
        "teacher_cache_build_images_per_s": round(cache_ips, 1),
    }

    print("profiling one step of each default ...", flush=True)
    result["profile"] = {"previous_default": profile_steps(previous, train, val, cache),
                         "new_default": profile_steps(new, train, val, cache)}
    for k, v in result["profile"].items():
        print(f"  {k}: {v['ms_per_step']} (total {v['ms_per_step_total']} ms)")

    half = dict(batch_size=previous.batch_size // 2)
    scenarios: dict[str, DistillConfig] = {
        "previous default (fp32, 1 process, 1 thread)": previous,
        "new default": new,
        "previous + bf16 only": previous.replace(precision="bf16"),
        "previous + fuse_frozen only": previous.replace(fuse_frozen=True),
        "new default, 1 thread": new.replace(torch_threads=1),
        # fp32 where the default is bf16 (AMX), bf16 where it is fp32
        "new default in the other precision": new.replace(
            precision="fp32" if new.precision == "bf16" else "bf16"),
    }
    ddp: dict[str, DistillConfig] = {} if args.no_ddp else {
        "previous default, 2 processes x 1 thread (gloo), batch 16 each": previous.replace(**half),
        "new default, 2 processes x 1 thread (gloo), batch 16 each": new.replace(**half),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in [*scenarios, *ddp]}
    with tempfile.TemporaryDirectory() as work_s:
        work = Path(work_s)
        train.to_parquet(work / "train.parquet")
        val.to_parquet(work / "val.parquet")
        np.save(work / "cache.npy", emb)
        for r in range(args.rounds):
            for name, cfg in scenarios.items():
                runs[name].append(run_scenario(cfg, train, val, cache))
                print(f"round {r}: {name:>62}: {runs[name][-1]['images_per_s']:6.1f} images/s",
                      flush=True)
            for name, cfg in ddp.items():
                runs[name].append(run_ddp(cfg, work))
                print(f"round {r}: {name:>62}: {runs[name][-1]['images_per_s']:6.1f} images/s",
                      flush=True)

    out_sc: dict[str, Any] = {}
    for name, rs in runs.items():
        cfg = {**scenarios, **ddp}[name]
        processes = 2 if name in ddp else 1
        images = rs[0]["steps"] * cfg.batch_size * processes
        out_sc[name] = {
            "images_per_s": round(statistics.median(r["images_per_s"] for r in rs), 1),
            "images_per_s_rounds": [round(r["images_per_s"], 1) for r in rs],
            # per CPU-second of (each) trainer process: the rate on an idle core
            "images_per_trainer_cpu_s": round(
                images / processes / statistics.median(r["train_cpu_s"] for r in rs), 1),
            "steps": rs[0]["steps"], "global_batch": cfg.batch_size * processes,
            "precision": cfg.precision, "fuse_frozen": cfg.fuse_frozen,
            "threads": (cfg.torch_threads or default_threads()) if processes == 1 else 1,
            "processes": processes,
        }
    result["scenarios"] = out_sc
    prev_ips = out_sc["previous default (fp32, 1 process, 1 thread)"]["images_per_s"]
    result["images_per_s"] = {"previous_default": prev_ips,
                              "new_default": out_sc["new default"]["images_per_s"]}
    result["speedup_vs_previous_default"] = round(
        out_sc["new default"]["images_per_s"] / prev_ips, 2)
    result["speedup_of_each_scenario"] = {
        name: round(v["images_per_s"] / prev_ips, 2) for name, v in out_sc.items()}
    # the same data and seed give the same batches: fp32 vs bf16 losses of the whole loop
    prev_l = np.array(runs["previous default (fp32, 1 process, 1 thread)"][0]["losses"])
    new_l = np.array(runs["new default"][0]["losses"])
    result["scenario_loss_max_abs_diff_new_vs_previous"] = round(
        float(np.abs(prev_l - new_l).max()), 5)
    print(f"speedup: {result['speedup_vs_previous_default']}x "
          f"({result['images_per_s']})", flush=True)

    print("agreement run (fp32 vs new default) ...", flush=True)
    result["agreement"] = agreement(new, train.head(args.agreement_images), val, cache,
                                    args.agreement_epochs)
    ag = result["agreement"]
    print({k: ag[k]["max_abs_loss_diff_vs_fp32"] for k in ("fp32_folded", "new_default")},
          "agree:", ag["agree"])

    n_default = min(DistillConfig().train_subset or len(train_all), len(train_all))
    steps = int(DistillConfig().epochs * (n_default // DistillConfig().batch_size))
    result["projection_default_run_train_s"] = {
        "train_images": n_default, "optimizer_steps": steps,
        "previous_default": round(steps * 32 / prev_ips, 1),
        "new_default": round(steps * 32 / out_sc["new default"]["images_per_s"], 1)}
    result["loadavg_start"] = [round(x, 2) for x in load_start]
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
