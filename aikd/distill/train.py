"""AI-KD training loop (Accelerate): prepare, step, finish.

Public API::

    result = train_distill(config, train_rows, val_rows, out_dir, labels=..., teacher_cache=...)
    model = load_quality_model(result.model_path)        # aikd.distill.model
    q = predict_quality(model, rows)                     # quality per row, label scale
    metrics = validate_quality(model, val_rows, ...)     # aikd.distill.validation

``train_distill(config, train_rows, val_rows, out_dir, *, labels=None, teacher_cache=None,
val_landmarks=None, resume=False, stop_after=None, on_validation=None) -> TrainResult``

* ``train_rows``/``val_rows``: DataFrames with ``root, path, x0, y0 .. x4, y4``; val rows
  also ``identity`` (pairs are built from held-out validation identities). A ``quality``
  column holds the pseudo label, or ``labels`` (parquet/CSV/DataFrame ``path, quality``)
  supplies it; any row without a finite label is refused before training starts.
* ``teacher_cache``: embeddings parquet(s) of reference-aligned images (``aikd.embed``),
  or a ``{path: vector}`` mapping; rows it lacks are embedded once by the teacher. Without
  a cache the teacher embeds x online under ``torch.no_grad()`` every step.
* ``val_landmarks``: ``{detector: table(path, x0..y4)}``; validation then also reports
  pAUC with the student's quality of faces aligned by each detector (at every validation).
* ``on_validation(step, metrics, final)``: called by the main process after each
  intermediate validation (``final=False``) and after the final one (``final=True``, once
  ``model.pt`` is written), e.g. to report to a hyper-parameter search (``aikd.tuning``).
* ``out_dir`` receives ``model.pt`` (the SWA-averaged student, see ``load_quality_model``),
  ``metrics.json`` (final validation), ``history.csv`` (per-step losses, lr, images/s),
  ``skipped.csv`` (unreadable images) and ``checkpoints/step_*`` (``accelerator.save_state``
  every ``checkpoint_every`` optimizer steps and at the end). ``resume=True`` continues
  from the newest checkpoint and reproduces the uninterrupted run's loss curve and weights.
* MLflow: if a run is active (the caller opens it with ``aikd.tracking.stage_run``),
  per-step losses, lr, images/s, validation metrics and ``model.pt`` go into it.

Multi-process: ``accelerate launch --multi_gpu --num_processes N -m aikd.distill <run>``
(also on CPU: with no GPU visible the processes join over gloo; ``--cpu`` would route
through Accelerate's MPI launcher). Each process reads its own shard of every global
batch (see ``EpochStreamSampler``), DDP averages the gradients, and only the main process
validates and writes files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from aikd.distill.checkpoints import list_checkpoints, save_checkpoint
from aikd.distill.config import DistillConfig
from aikd.distill.data import DistillDataset, LabelNorm, collate
from aikd.distill.loss import LossTerms
from aikd.distill.model import has_batchnorm, save_quality_model, state_digest
from aikd.distill.prepare import OnValidation, TrainingRun, prepare_run, subset_rows
from aikd.distill.teacher import read_teacher_cache, teacher_embed_rows
from aikd.distill.validation import validate_quality
from aikd.faces import to_float_input

log = logging.getLogger(__name__)

__all__ = ["TrainResult", "read_teacher_cache", "teacher_embed_rows", "train_distill"]


@dataclass
class TrainResult:
    """What one training run produced (paths are inside ``out_dir``)."""

    out_dir: Path
    model_path: Path | None  # None when the run was stopped early (stop_after)
    completed: bool
    steps: int  # optimizer steps done
    total_steps: int
    metrics: dict[str, float]  # final validation of the averaged model
    history: pd.DataFrame  # one row per optimizer step
    skipped: pd.DataFrame  # path, message of unreadable images
    label_norm: LabelNorm
    seconds: float
    train_images: int
    teacher_digest: str  # sha256 of the teacher's parameters and buffers (checked unchanged)
    #: seconds spent in setup (data checks, models, teacher embeddings), training steps
    #: (wall and CPU time of this process), intermediate validations, checkpoints and the
    #: final validation
    timings: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        h = self.history
        return float(h["images_per_s"].median()) if len(h) else math.nan


@dataclass
class _Progress:
    """What the loop tracks between optimizer steps and never checkpoints."""

    bar: tqdm
    use_mlflow: bool
    images_per_step: int
    t_step: float  # wall and CPU clock at the start of the current optimizer step
    cpu_step: float
    trace: list[list[int]] = field(default_factory=list)


def default_threads() -> int:
    """One torch thread per core this process may use, shared among the processes of a
    launch on this host (``accelerate launch`` sets LOCAL_WORLD_SIZE)."""
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, cores // max(1, procs))


def train_distill(
    config: DistillConfig | Mapping[str, Any],
    train_rows: pd.DataFrame,
    val_rows: pd.DataFrame,
    out_dir: str | Path,
    *,
    labels: str | Path | pd.DataFrame | None = None,
    teacher_cache: str | Path | Sequence[str | Path] | Mapping[str, np.ndarray] | None = None,
    val_landmarks: Mapping[str, pd.DataFrame] | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    on_validation: OnValidation | None = None,
) -> TrainResult:
    """Train one AI-KD (or baseline) quality model; see the module docstring."""
    cfg = config if isinstance(config, DistillConfig) else DistillConfig.from_dict(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.torch_threads or default_threads())
    try:
        run = prepare_run(cfg, train_rows, val_rows, Path(out_dir), labels=labels,
                          teacher_cache=teacher_cache, val_landmarks=val_landmarks,
                          resume=resume, stop_after=stop_after, on_validation=on_validation)
        return _finish(run, _loop(run))
    finally:
        torch.set_num_threads(threads)


def _loop(run: TrainingRun) -> _Progress:
    """Optimizer steps until the run is done or ``stop_after`` steps."""
    cfg, accelerator = run.cfg, run.accelerator
    bar = tqdm(total=run.plan.total_steps, initial=run.state.step,
               disable=not (run.main and cfg.progress), desc="distill", unit="step",
               dynamic_ncols=True)
    t_step, cpu_step = time.perf_counter(), time.process_time()
    progress = _Progress(bar, _mlflow_active(run), cfg.batch_size * cfg.grad_accum
                         * accelerator.num_processes, t_step, cpu_step)
    run.timings["setup_s"] = t_step - run.t_start
    micro: list[tuple[float, ...]] = []
    run.student.train()
    run.teacher.train()  # a no-op by design; kept to show the teacher cannot be switched
    for batch in run.loader:
        if cfg.trace:
            progress.trace += batch_items(batch)
        terms = _train_step(run, batch)
        micro.append(tuple(float(t.detach()) for t in terms))
        if not accelerator.sync_gradients:
            continue
        stopping = _after_optimizer_step(run, progress, micro)
        micro = []
        if stopping:
            break
    bar.close()
    return progress


def _train_step(run: TrainingRun, batch: Mapping[str, torch.Tensor]) -> LossTerms:
    """Forward and backward of one micro-batch; the optimizer steps when Accelerate syncs."""
    cfg, accelerator, device = run.cfg, run.accelerator, run.device
    with accelerator.accumulate(run.student):
        x_hat = to_float_input(batch["x_hat"].to(device), cfg.channels_last)
        q = batch["q"].to(device)
        with run.autocast():
            if "e" in batch:
                e = batch["e"].to(device)
            elif run.need_teacher:
                e = run.teacher(to_float_input(batch["x"].to(device), cfg.channels_last))
            else:
                e = None
            e_hat, q_hat = run.student(x_hat)
        terms = run.loss_fn(e_hat, q_hat, q, e)
        accelerator.backward(terms.total)
        if accelerator.sync_gradients and cfg.clip_grad_norm > 0:
            accelerator.clip_grad_norm_(run.trainable, cfg.clip_grad_norm)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    return terms


def _after_optimizer_step(run: TrainingRun, progress: _Progress,
                          micro: list[tuple[float, ...]]) -> bool:
    """SWA and schedules, history and logs, validation and checkpoint of one optimizer
    step; True when the run stops here (``stop_after``)."""
    cfg, state, plan, timings = run.cfg, run.state, run.plan, run.timings
    lr = run.optimizer.param_groups[0]["lr"]
    state.step += 1
    step = state.step
    if step > plan.swa_start_step and (step - plan.swa_start_step) % cfg.swa_every == 0:
        run.swa_model.update_parameters(run.accelerator.unwrap_model(run.student))
    if step >= plan.swa_start_step:
        run.swa_sched.step()
    else:
        run.warm_sched.step()
    means = torch.tensor(micro, dtype=torch.float64, device=run.device).mean(dim=0)
    if run.accelerator.num_processes > 1:
        means = run.accelerator.reduce(means, reduction="mean")
    now = time.perf_counter()
    ips = progress.images_per_step / max(now - progress.t_step, 1e-9)
    timings["train_s"] += now - progress.t_step
    timings["train_cpu_s"] += time.process_time() - progress.cpu_step
    row = {"step": step, "epoch": step * cfg.grad_accum / plan.batches_per_epoch,
           "loss": float(means[0]), "loss_consistency": float(means[1]),
           "loss_quality": float(means[2]), "lr": float(lr), "images_per_s": ips}
    state.history.append(row)
    progress.bar.update(1)
    progress.bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{ips:.1f}")
    if progress.use_mlflow and (step % cfg.log_every == 0 or step == plan.total_steps):
        mlflow.log_metrics(
            {k: v for k, v in row.items() if k != "step" and math.isfinite(v)}, step=step
        )
    t_aside = time.perf_counter()
    if cfg.val_every and step % cfg.val_every == 0 and step < plan.total_steps:
        _validate_during(run, progress, step)
    t_ckpt = time.perf_counter()
    timings["validation_s"] += t_ckpt - t_aside
    stopping = run.stop_after is not None and step >= run.stop_after and step < plan.total_steps
    if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or stopping:
        save_checkpoint(run.accelerator, run.ckpt_dir, step, cfg.keep_checkpoints)
    # images/s counts training only, not saves/validation
    progress.t_step, progress.cpu_step = time.perf_counter(), time.process_time()
    timings["checkpoint_s"] += progress.t_step - t_ckpt
    return stopping


def _validate_during(run: TrainingRun, progress: _Progress, step: int) -> None:
    """Intermediate validation of the current student on a fixed subset (main process)."""
    if run.main:
        sub = subset_rows(run.val, run.cfg.val_subset, run.cfg.seed)
        sub_e = run.val_e[_positions(run.val, sub)]
        metrics = _validate(run, run.accelerator.unwrap_model(run.student), sub, sub_e)
        if progress.use_mlflow:
            mlflow.log_metrics(_finite(metrics), step=step)
        progress.bar.write(f"step {step}: " + _fmt(metrics))
        if run.on_validation is not None:
            run.on_validation(step, metrics, False)
    run.accelerator.wait_for_everyone()


def _validate(run: TrainingRun, model: nn.Module, rows: pd.DataFrame,
              teacher_embeddings: np.ndarray, *, final: bool = False) -> dict[str, float]:
    """Validation metrics; the final one adds the learnability figures (student vs a
    constant and a ridge probe on the teacher embedding of the training images)."""
    cfg = run.cfg
    train_fit = (run.dataset.targets, run.dataset.teacher) if final else None
    return validate_quality(
        model, rows, teacher_embeddings, label_norm=run.label_norm, quality_loss=run.loss_fn,
        max_shift=cfg.val_max_shift, units=cfg.jitter_units, seed=cfg.seed,
        landmark_tables=run.val_landmarks, device=run.device, batch_size=cfg.batch_size,
        channels_last=cfg.channels_last, autocast=run.autocast,
        workers=cfg.num_workers, train_fit=train_fit,
    )


def _finish(run: TrainingRun, progress: _Progress) -> TrainResult:
    """BN statistics of the average, final checkpoint and validation, the model file."""
    if state_digest(run.teacher.backbone) != run.teacher_digest:
        raise RuntimeError("the teacher's weights or buffers changed during training")
    cfg, state, timings = run.cfg, run.state, run.timings
    completed = state.step >= run.plan.total_steps
    history = pd.DataFrame(state.history)
    if cfg.trace:
        _write_trace(run, progress.trace)
    if not completed:
        return _result(run, None, False, {}, history)

    t_finish = time.perf_counter()
    if has_batchnorm(run.swa_model):
        update_bn(run.swa_model, run.dataset, cfg, run.device)
    done = list_checkpoints(run.ckpt_dir)
    if not done or done[-1].name != f"step_{state.step:07d}":
        save_checkpoint(run.accelerator, run.ckpt_dir, state.step, cfg.keep_checkpoints)
    t_val = time.perf_counter()
    timings["checkpoint_s"] += t_val - t_finish
    metrics: dict[str, float] = {}
    model_path: Path | None = None
    if run.main:
        metrics = {**_validate(run, run.swa_model, run.val, run.val_e, final=True),
                   **run.head_init}
        timings["final_validation_s"] = time.perf_counter() - t_val
        model_path = _publish(run, progress, metrics, history)
        log.info("distill done: %s", _fmt(metrics))
        if run.on_validation is not None:
            run.on_validation(state.step, metrics, True)
    run.accelerator.wait_for_everyone()
    return _result(run, model_path or run.out / "model.pt", True, metrics, history)


def _publish(run: TrainingRun, progress: _Progress, metrics: dict[str, float],
             history: pd.DataFrame) -> Path:
    """model.pt, history.csv, skipped.csv and metrics.json, and the same into MLflow."""
    out, steps, skipped = run.out, run.state.step, run.skipped
    n_averaged, n_images = int(run.swa_model.n_averaged), len(run.dataset)
    model_path = save_quality_model(
        out / "model.pt", run.swa_model.module, backbone_name=run.cfg.backbone,
        label_norm=run.label_norm, config=run.cfg.to_dict(),
        extra={"steps": steps, "train_images": n_images, "swa_averaged": n_averaged,
               "val_metrics": metrics},
    )
    history.to_csv(out / "history.csv", index=False)
    skipped.to_csv(out / "skipped.csv", index=False)
    summary = {"metrics": metrics, "steps": steps, "train_images": n_images,
               "skipped": len(skipped), "swa_averaged": n_averaged,
               "median_images_per_s": float(history["images_per_s"].median()),
               "config": {"precision": run.cfg.precision,
                          "precision_choice": run.precision.to_dict() if run.precision else None},
               "seconds": time.perf_counter() - run.t_start,
               "timings": {k: round(v, 2) for k, v in run.timings.items()}}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    if progress.use_mlflow:
        mlflow.log_metrics(_finite({f"final_{k}": v for k, v in metrics.items()}), step=steps)
        mlflow.log_metrics({"skipped_images": float(len(skipped)),
                            "train_images": float(n_images),
                            **{f"time_{k}": v for k, v in run.timings.items()}}, step=steps)
        mlflow.log_artifact(str(model_path), artifact_path="distill")
        mlflow.log_artifact(str(out / "metrics.json"), artifact_path="distill")
    return model_path


def _result(run: TrainingRun, model_path: Path | None, completed: bool,
            metrics: dict[str, float], history: pd.DataFrame) -> TrainResult:
    return TrainResult(run.out, model_path, completed, run.state.step, run.plan.total_steps,
                       metrics, history, run.skipped, run.label_norm,
                       time.perf_counter() - run.t_start, len(run.dataset), run.teacher_digest,
                       run.timings, run.cfg.to_dict())


def batch_items(batch: Mapping[str, torch.Tensor]) -> list[list[int]]:
    """``[epoch, index]`` of each sample of a batch (the multi-process trace)."""
    return [[int(e), int(i)] for e, i in zip(batch["epoch"], batch["index"], strict=True)]


def _positions(full: pd.DataFrame, sub: pd.DataFrame) -> np.ndarray:
    where = pd.Series(np.arange(len(full)), index=full["path"])
    return where.loc[sub["path"]].to_numpy()


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if math.isfinite(v)}


def _fmt(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def _mlflow_active(run: TrainingRun) -> bool:
    return run.main and mlflow.active_run() is not None


@torch.no_grad()
def update_bn(swa_model: AveragedModel, dataset: DistillDataset, cfg: DistillConfig,
               device: torch.device) -> None:
    """Recompute BatchNorm statistics of the averaged weights on (jittered) training faces."""
    n = min(len(dataset), 50 * cfg.batch_size)
    idx = np.random.default_rng([cfg.seed, 13]).choice(len(dataset), n, replace=False)

    def batches() -> Iterator[torch.Tensor]:
        for lo in range(0, n, cfg.batch_size):
            items = [dataset[(0, int(i))] for i in idx[lo : lo + cfg.batch_size]]
            yield to_float_input(collate(items)["x_hat"].to(device), cfg.channels_last)

    torch.optim.swa_utils.update_bn(batches(), swa_model)


def _write_trace(run: TrainingRun, seen: list[list[int]]) -> None:
    accelerator = run.accelerator
    d = run.out / "trace"
    d.mkdir(parents=True, exist_ok=True)
    info = {"rank": accelerator.process_index, "world_size": accelerator.num_processes,
            "seen": seen, "student_digest": state_digest(accelerator.unwrap_model(run.student)),
            "swa_digest": state_digest(run.swa_model.module)}
    (d / f"rank{accelerator.process_index}.json").write_text(json.dumps(info))
