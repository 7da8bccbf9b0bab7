"""Everything one training run builds before its first step.

Checked rows and labels, the Accelerator, teacher and student, the teacher's targets,
the dataset and its sampler, the optimizer with its warm-up and SWA schedules, and the
state a checkpoint restores. They are made in one fixed order after ``set_seed``, so the
random-number streams, and with them the weights, are the same on every run and resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import SWALR, AveragedModel, get_swa_multi_avg_fn
from torch.utils.data import DataLoader

from aikd.distill.checkpoints import TrainState, resume_latest
from aikd.distill.config import DistillConfig
from aikd.distill.data import (
    DistillDataset,
    EpochStreamSampler,
    LabelNorm,
    attach_labels,
    check_labels,
    check_rows,
    collate,
    filter_readable,
    seed_worker,
)
from aikd.distill.fast import fold_frozen_prefix, follow_input_dtype
from aikd.distill.head_init import initialise_head
from aikd.distill.loss import AIKDLoss
from aikd.distill.model import build_models, state_digest, to_channels_last
from aikd.distill.precision import PrecisionChoice, choose_precision, keep_choice, kept_choice
from aikd.distill.teacher import read_teacher_cache, teacher_embed_rows
from aikd.landmarks.base import POINT_COLUMNS

log = logging.getLogger(__name__)

#: ``on_validation(step, metrics, final)``, see :func:`aikd.distill.train.train_distill`.
OnValidation = Callable[[int, dict[str, float], bool], None]


@dataclass(frozen=True)
class StepPlan:
    """How many micro-batches and optimizer steps a run takes, and when SWA starts."""

    batches_per_epoch: int  # micro-batches of one process per epoch
    total_micro: int
    total_steps: int
    swa_start_step: int

    @classmethod
    def of(cls, cfg: DistillConfig, n_images: int, world: int) -> StepPlan:
        probe = EpochStreamSampler(n_images, batch_size=cfg.batch_size, total_batches=0,
                                   world_size=world)
        total_micro = int(cfg.epochs * probe.batches_per_epoch) // cfg.grad_accum * cfg.grad_accum
        total_steps = total_micro // cfg.grad_accum
        if total_steps < 1:
            raise ValueError(f"epochs={cfg.epochs} gives no optimizer step on {n_images} images")
        swa_start_step = min(int(cfg.swa_start * total_steps), total_steps - 1)
        return cls(probe.batches_per_epoch, total_micro, total_steps, swa_start_step)


@dataclass
class TrainingRun:
    """One prepared run: what the loop, its steps and its finish share."""

    cfg: DistillConfig
    out: Path
    ckpt_dir: Path
    accelerator: Accelerator
    label_norm: LabelNorm
    val: pd.DataFrame
    val_e: np.ndarray | None  # teacher embeddings of ``val`` (main process only)
    val_landmarks: Mapping[str, pd.DataFrame] | None
    skipped: pd.DataFrame  # path, message of unreadable images
    dataset: DistillDataset
    loader: DataLoader
    plan: StepPlan
    teacher: nn.Module
    student: nn.Module  # as prepared by Accelerate (DDP-wrapped with several processes)
    teacher_digest: str
    need_teacher: bool  # the loss needs teacher embeddings and no cache gives them
    loss_fn: AIKDLoss
    optimizer: torch.optim.Optimizer
    warm_sched: LambdaLR
    swa_sched: SWALR
    swa_model: AveragedModel
    trainable: list[nn.Parameter]
    state: TrainState
    stop_after: int | None
    on_validation: OnValidation | None
    t_start: float
    #: seconds spent in setup, training steps, validations and checkpoints
    timings: dict[str, float]
    #: the head before fine-tuning (aikd.distill.head_init.initialise_head), into metrics
    head_init: dict[str, float] = field(default_factory=dict)
    #: the precision it trains in and why (aikd.distill.precision), into metrics.json
    precision: PrecisionChoice | None = None

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward passes' precision: bf16 autocast for ``precision: bf16`` (fp32
        weights and loss), none for fp32. On a GPU Accelerate's own autocast does this."""
        if self.device.type == "cuda":
            return self.accelerator.autocast()
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.cfg.precision == "bf16")


def prepare_run(
    cfg: DistillConfig,
    train_rows: pd.DataFrame,
    val_rows: pd.DataFrame,
    out: Path,
    *,
    labels: Any,
    teacher_cache: Any,
    val_landmarks: Mapping[str, pd.DataFrame] | None,
    resume: bool,
    stop_after: int | None,
    on_validation: OnValidation | None,
) -> TrainingRun:
    """Check the data, build models and optimizer, and resume from a checkpoint if asked."""
    t_start = time.perf_counter()
    timings = dict.fromkeys(("setup_s", "train_s", "train_cpu_s", "validation_s",
                             "checkpoint_s", "final_validation_s"), 0.0)
    # Rows and labels are checked on the whole split before anything is built or deleted.
    train_all = prepare_rows(train_rows, labels, "train")
    val = prepare_rows(val_rows, labels, "val", need_identity=True)
    label_norm = LabelNorm.fit(train_all["quality"].to_numpy(), cfg.label_norm)
    ckpt_dir = out / "checkpoints"
    accelerator = _start(cfg, out, ckpt_dir, resume)
    main = accelerator.is_main_process
    precision = _precision(cfg, accelerator, ckpt_dir, resume)
    cfg = dataclasses.replace(cfg, precision=precision.precision)

    train = subset_rows(train_all, cfg.train_subset, cfg.seed)
    teacher, student = build_models(cfg.backbone, cfg.backbone_weights, cfg.trainable, cfg.seed,
                                    unit_input=cfg.head_input == "unit")
    teacher_digest = state_digest(teacher.backbone)
    template = str(student.backbone.template)
    skipped = pd.DataFrame(columns=["path", "message"])
    if cfg.check_images:
        train, bad_t = filter_readable(train, threads=2, template=template)
        val, bad_v = filter_readable(val, threads=2, template=template)
        skipped = pd.concat([bad_t, bad_v], ignore_index=True)
    device = accelerator.device
    if cfg.channels_last:
        to_channels_last(teacher)
        to_channels_last(student)
    teacher.to(device)
    student.to(device)
    if cfg.precision == "bf16":  # same parameters; only the affines' compute dtype changes
        follow_input_dtype(teacher)
        follow_input_dtype(student)

    cache = read_teacher_cache(teacher_cache) if teacher_cache is not None else None
    emb_kw = dict(device=device, channels_last=cfg.channels_last, cache=cache,
                  workers=cfg.num_workers)
    train_e = teacher_embed_rows(teacher, train, **emb_kw) if cache is not None else None
    val_e = teacher_embed_rows(teacher, val, **emb_kw) if main else None
    need_teacher = cfg.w > 0 or train_e is not None
    targets = label_norm.transform(train["quality"].to_numpy()).astype(np.float32)
    dataset = DistillDataset(
        train, template=template, max_shift=cfg.max_shift, units=cfg.jitter_units,
        seed=cfg.seed, targets=targets, teacher_embeddings=train_e,
        with_x=train_e is None and need_teacher, hflip=cfg.hflip,
    )
    plan = StepPlan.of(cfg, len(dataset), accelerator.num_processes)

    loss_fn = AIKDLoss(cfg.w, cfg.quality_loss, cfg.smooth_l1_beta)
    head_init = _init_head(cfg, student, teacher, train, train_e, targets, val, val_e,
                           label_norm, emb_kw)
    optimizer, swa_sched, warm_sched = _optimizer(cfg, student)
    # foreach lerp: what AveragedModel does by default on a GPU; its CPU default loops
    # over the tensors (13 vs 3 ms per update of the 5.6 M parameters)
    swa_model = AveragedModel(student, multi_avg_fn=get_swa_multi_avg_fn())
    if cfg.fuse_frozen:  # after the average's copy: it and model.pt keep the plain path
        fold_frozen_prefix(student, torch.bfloat16 if cfg.precision == "bf16" else torch.float32,
                           cfg.channels_last)
    student, optimizer = accelerator.prepare(student, optimizer)
    trainable = [p for p in accelerator.unwrap_model(student).parameters() if p.requires_grad]
    # The global batch is batch_size x processes: a resume with another process count
    # would silently continue another run, so the count is part of what must not change.
    # The data too: a checkpoint of a run on other images, labels or landmarks (new
    # splits, relabelled data) must not be resumed under the same config.
    resumable = {**cfg.to_dict(), "processes": accelerator.num_processes,
                 "data": data_fingerprint(train, val)}
    state = TrainState(resumable)
    accelerator.register_for_checkpointing(warm_sched, swa_sched, swa_model, state)
    if resume:
        resume_latest(accelerator, state, resumable, ckpt_dir)
    return TrainingRun(
        cfg, out, ckpt_dir, accelerator, label_norm, val, val_e, val_landmarks, skipped,
        dataset, _loader(cfg, accelerator, dataset, plan, state.step), plan, teacher, student,
        teacher_digest, need_teacher, loss_fn, optimizer, warm_sched, swa_sched, swa_model,
        trainable, state, stop_after, on_validation, t_start, timings, head_init,
        precision,
    )


def _init_head(cfg: DistillConfig, student: nn.Module, teacher: nn.Module,
               train: pd.DataFrame, train_e: np.ndarray | None, targets: np.ndarray,
               val: pd.DataFrame, val_e: np.ndarray | None, label_norm: LabelNorm,
               emb_kw: dict[str, Any]) -> dict[str, float]:
    """The head before fine-tuning (``cfg.head_init``) and its fit on validation people.
    Without a teacher cache the probe embeds the training images once."""
    if cfg.head_init in ("probe", "ridge") and train_e is None:
        train_e = teacher_embed_rows(teacher, train, **emb_kw)
    val_t = label_norm.transform(val["quality"].to_numpy()) if val_e is not None else None
    return initialise_head(cfg.head_init, student.head, train_e, targets, val_features=val_e,
                           val_targets=val_t)


def _start(cfg: DistillConfig, out: Path, ckpt_dir: Path, resume: bool) -> Accelerator:
    """The Accelerator (bf16 on a GPU unless ``precision: fp32``; on CPU ``TrainingRun.autocast``
    applies the precision, as Accelerate's process-wide state fixes one per process), a
    fresh checkpoint folder unless resuming, seeds."""
    cuda = torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=not cuda,
        mixed_precision="bf16" if cuda and cfg.precision != "fp32" else "no",
        gradient_accumulation_steps=cfg.grad_accum,
    )
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if not resume and ckpt_dir.exists():
            log.warning("resume=False: removing old checkpoints in %s", ckpt_dir)
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    set_seed(cfg.seed)
    return accelerator


def _precision(cfg: DistillConfig, accelerator: Accelerator, ckpt_dir: Path,
               resume: bool) -> PrecisionChoice:
    """The precision of this run: on a resume with ``auto`` the one it started with (a
    timed choice could differ the second time), else :func:`choose_precision` on the main
    process, shared with the others so that every process computes alike."""
    main = accelerator.is_main_process
    kept = kept_choice(ckpt_dir) if resume and cfg.precision == "auto" else None
    choice = kept or (choose_precision(cfg) if main else None)
    if accelerator.num_processes > 1:
        box = [choice.to_dict() if choice is not None else None]
        broadcast_object_list(box, from_process=0)
        choice = PrecisionChoice.from_dict(box[0])
    assert choice is not None
    if main:
        keep_choice(ckpt_dir, choice)
    return choice


def _optimizer(cfg: DistillConfig, student: nn.Module) -> tuple[torch.optim.SGD, SWALR, LambdaLR]:
    """SGD with the head's and the backbone's own momentum and weight decay, its SWA
    schedule and its linear warm-up."""
    head_params, bb_params = student.param_groups()
    groups = [{"params": head_params, "momentum": cfg.head_momentum,
               "weight_decay": cfg.head_weight_decay}]
    if bb_params:
        groups.append({"params": bb_params, "momentum": cfg.backbone_momentum,
                       "weight_decay": cfg.backbone_weight_decay})
    optimizer = torch.optim.SGD(groups, lr=cfg.lr)
    # SWALR is built first: its constructor touches the lr, which LambdaLR then resets.
    swa_sched = SWALR(optimizer, swa_lr=cfg.swa_lr, anneal_epochs=cfg.swa_anneal_steps,
                      anneal_strategy="linear")
    warm = cfg.warmup_steps
    warm_sched = LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm) if warm > 0 else 1.0)
    return optimizer, swa_sched, warm_sched


def _loader(cfg: DistillConfig, accelerator: Accelerator, dataset: DistillDataset,
            plan: StepPlan, step: int) -> DataLoader:
    """This process's share of the run's sample stream, from optimizer step ``step`` on."""
    sampler = EpochStreamSampler(
        len(dataset), batch_size=cfg.batch_size, total_batches=plan.total_micro, seed=cfg.seed,
        rank=accelerator.process_index, world_size=accelerator.num_processes,
        start_batch=step * cfg.grad_accum,
    )
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * accelerator.process_index)
    return DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
        collate_fn=collate, worker_init_fn=seed_worker, generator=gen,
        persistent_workers=False, prefetch_factor=4 if cfg.num_workers else None,
        pin_memory=accelerator.device.type == "cuda",
    )


def data_fingerprint(train: pd.DataFrame, val: pd.DataFrame) -> str:
    """A digest of what a run learns from: the training rows' paths, labels and landmarks
    and the validation rows' paths and labels (row order included: it fixes the batches)."""
    digest = hashlib.sha256()
    for frame in (train, val):
        cols = [c for c in ("path", "quality", *POINT_COLUMNS) if c in frame.columns]
        digest.update(pd.util.hash_pandas_object(frame[cols], index=False).to_numpy().tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


def subset_rows(rows: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """A seeded random ``n`` of the rows in their order (all of them when ``n`` is None)."""
    if n is None or n >= len(rows):
        return rows
    pick = np.sort(np.random.default_rng([int(seed), 11]).choice(len(rows), n, replace=False))
    return rows.iloc[pick].reset_index(drop=True)


def prepare_rows(
    rows: pd.DataFrame, labels: Any, what: str, need_identity: bool = False
) -> pd.DataFrame:
    """Checked rows with a finite label each; test-split rows are refused."""
    rows = check_rows(rows, what)
    if "split" in rows.columns and (rows["split"] == "test").any():
        raise ValueError(
            f"{what} rows include {int((rows['split'] == 'test').sum())} images of the 'test' "
            "split; evaluation images must never be used for training or tuning"
        )
    rows = attach_labels(rows, labels, what) if labels is not None else check_labels(rows, what)
    if need_identity and "identity" not in rows.columns:
        raise ValueError(f"{what} rows need an 'identity' column for validation pairs")
    return rows
