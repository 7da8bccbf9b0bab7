"""AI-KD training loop (Accelerate), validation and the command-line entry point.

Public API::

    result = train_distill(config, train_rows, val_rows, out_dir, labels=..., teacher_cache=...)
    model = load_quality_model(result.model_path)        # aikd.distill.model
    q = predict_quality(model, rows)                     # quality per row, label scale
    metrics = validate_quality(model, val_rows, ...)     # val L_q, cosine, pAUC

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

Multi-process: ``accelerate launch --multi_gpu --num_processes N -m aikd.distill.train ...``
(also on CPU: with no GPU visible the processes join over gloo; ``--cpu`` would route
through Accelerate's MPI launcher). Each process reads its own shard of every global
batch (see ``EpochStreamSampler``), DDP averages the gradients, and only the main process
validates and writes files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel
from torch.utils.data import DataLoader
from tqdm import tqdm

from aikd.data.images import read_rgb
from aikd.distill.config import DistillConfig
from aikd.distill.data import (
    VAL_EPOCH,
    DistillDataset,
    EpochStreamSampler,
    LabelNorm,
    attach_labels,
    check_labels,
    check_rows,
    collate,
    filter_readable,
    iter_faces,
    landmarks_for,
    row_files,
    seed_worker,
    to_float_input,
)
from aikd.distill.loss import AIKDLoss
from aikd.distill.model import (
    QualityModel,
    build_models,
    cosine,
    has_batchnorm,
    save_quality_model,
    state_digest,
    to_channels_last,
)
from aikd.embed import landmarks_array
from aikd.evaluation import UndefinedPAUCWarning, pauc

log = logging.getLogger(__name__)

#: Settings that may change between an interrupted run and its resume (they do not
#: change what is computed); any other difference makes the resume refuse.
_RESUMABLE_CHANGES = {
    "num_workers", "progress", "log_every", "checkpoint_every", "keep_checkpoints", "trace",
    "check_images", "val_every", "val_subset", "val_max_shift", "torch_threads",
}


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


class _TrainState:
    """Counters and history that must survive a resume (registered for checkpointing)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.config = dict(config)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "history": list(self.history), "config": dict(self.config)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.history = list(state["history"])
        self.config = dict(state["config"])


# --------------------------------------------------------------------------- teacher embeddings


def read_teacher_cache(
    cache: str | Path | Sequence[str | Path] | Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """``{path: embedding}`` from embeddings parquet file(s) or a ready mapping."""
    if isinstance(cache, Mapping):
        return {str(k): np.asarray(v, dtype=np.float32) for k, v in cache.items()}
    from aikd.data.io import read_vectors

    files = [cache] if isinstance(cache, str | Path) else list(cache)
    out: dict[str, np.ndarray] = {}
    for f in files:
        meta, vectors = read_vectors(f)
        for p, v in zip(meta["path"], vectors, strict=True):
            if p in out and not np.array_equal(out[p], v):
                raise ValueError(f"teacher cache {f}: path {p} appears in two caches")
            out[p] = v
    return out


@torch.no_grad()
def teacher_embed_rows(
    teacher: nn.Module,
    rows: pd.DataFrame,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    workers: int = 1,
    channels_last: bool = True,
    cache: Mapping[str, np.ndarray] | None = None,
    verify: int = 4,
) -> np.ndarray:
    """(N, d) teacher embeddings of the reference-aligned rows; cached ones are reused.

    A cache made with another network, template or landmarks would silently teach the
    wrong targets, so up to ``verify`` cached rows are re-embedded and must agree
    (cosine > 0.99; bf16 and channels-last differences stay far above that).
    """
    d = int(teacher.embedding_dim)
    out = np.full((len(rows), d), np.nan, dtype=np.float32)
    todo, hits = [], []
    for i, p in enumerate(rows["path"]):
        if cache is not None and p in cache:
            vec = np.asarray(cache[p], dtype=np.float32)
            if vec.shape != (d,):
                raise ValueError(f"teacher cache has {vec.shape} vectors, the teacher gives ({d},)")
            out[i] = vec
            hits.append(i)
        else:
            todo.append(i)
    kw = dict(device=device, batch_size=batch_size, workers=workers, channels_last=channels_last)
    if hits and verify:
        check = np.asarray(hits[:verify])
        fresh = _embed(teacher, rows.iloc[check], **kw)
        agree = np.sum(fresh * out[check], axis=1) / (
            np.linalg.norm(fresh, axis=1) * np.linalg.norm(out[check], axis=1))
        if not (agree > 0.99).all():
            raise ValueError(
                f"teacher cache disagrees with the teacher (cosine {agree.round(3).tolist()} "
                f"for {rows['path'].iloc[check].tolist()}): built with another backbone, "
                "template or landmarks?"
            )
    if todo:
        if cache is not None:
            log.info("teacher cache lacks %d of %d rows: embedding them now", len(todo), len(rows))
        out[np.asarray(todo)] = _embed(teacher, rows.iloc[todo], **kw)
    return out


def _embed(teacher: nn.Module, rows: pd.DataFrame, *, device: torch.device | str,
           batch_size: int, workers: int, channels_last: bool) -> np.ndarray:
    out = np.full((len(rows), int(teacher.embedding_dim)), np.nan, dtype=np.float32)
    for idx, batch, bad in iter_faces(row_files(rows), landmarks_array(rows),
                                      str(teacher.template), batch_size=batch_size,
                                      workers=workers):
        if bad:
            raise ValueError(f"teacher embedding failed: {bad[:3]}")
        if batch is not None:
            x = to_float_input(batch.to(device), channels_last)
            out[idx] = teacher(x).float().cpu().numpy()
    return out


# --------------------------------------------------------------------------- validation


def build_validation_pairs(identities: Sequence[Any], seed: int = 0) -> pd.DataFrame:
    """All mated pairs within each identity plus as many seeded non-mated pairs.

    Returns columns ``a, b`` (row indices, a < b) and ``mated``. Non-mated pairs are drawn
    without repetition; if fewer distinct ones exist, all of them are used.
    """
    ids = pd.Series(pd.factorize(pd.Series(list(identities)))[0])
    n = len(ids)
    mated: list[tuple[int, int]] = []
    for _, idx in ids.groupby(ids).groups.items():
        members = sorted(int(i) for i in idx)
        mated += [(a, b) for k, a in enumerate(members) for b in members[k + 1 :]]
    n_nonmated_possible = n * (n - 1) // 2 - len(mated)
    want = min(len(mated), n_nonmated_possible)
    rng = np.random.default_rng([int(seed), 7])
    chosen: set[tuple[int, int]] = set()
    lab = ids.to_numpy()
    while len(chosen) < want:
        a = rng.integers(0, n, size=2 * (want - len(chosen)) + 16)
        b = rng.integers(0, n, size=a.size)
        for i, j in zip(a, b, strict=True):
            if lab[i] != lab[j]:
                chosen.add((int(min(i, j)), int(max(i, j))))
                if len(chosen) == want:
                    break
    non = sorted(chosen)
    pairs = [(a, b, True) for a, b in mated] + [(a, b, False) for a, b in non]
    return pd.DataFrame(pairs, columns=["a", "b", "mated"])


def _quality_and_embedding(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding, normalised quality) from a student, an AveragedModel or a QualityModel."""
    if isinstance(model, AveragedModel):
        model = model.module
    if isinstance(model, QualityModel):
        emb = model.backbone(x)
        return emb, model.head(emb).squeeze(-1)
    emb, q = model(x)
    return emb, q


@torch.no_grad()
def _score_aligned(
    model: nn.Module,
    rows: pd.DataFrame,
    landmarks: np.ndarray,
    template: str,
    *,
    device: torch.device,
    batch_size: int,
    channels_last: bool,
    autocast: Any,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, normalised quality) of rows aligned with the given landmarks."""
    files = row_files(rows)
    emb_out: np.ndarray | None = None
    q_out = np.full(len(rows), np.nan)
    ok = np.flatnonzero(np.isfinite(landmarks).all(axis=(1, 2)))
    for idx, batch, _bad in iter_faces(
        [files[i] for i in ok], landmarks[ok], template, batch_size=batch_size, workers=workers
    ):
        if batch is None:
            continue
        x = to_float_input(batch.to(device), channels_last)
        with autocast():
            emb, q = _quality_and_embedding(model, x)
        emb = emb.float().cpu().numpy()
        if emb_out is None:
            emb_out = np.full((len(rows), emb.shape[1]), np.nan, dtype=np.float32)
        sel = ok[np.asarray(idx)]
        emb_out[sel] = emb
        q_out[sel] = q.float().cpu().numpy()
    if emb_out is None:
        emb_out = np.full((len(rows), 1), np.nan, dtype=np.float32)
    return emb_out, q_out


def _pauc_or_nan(sim: np.ndarray, mated: np.ndarray, qa: np.ndarray, qb: np.ndarray,
                 fmr: float) -> float:
    keep = np.isfinite(qa) & np.isfinite(qb)
    if keep.sum() == 0 or mated[keep].all() or not mated[keep].any():
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedPAUCWarning)
        return float(pauc(sim[keep], mated[keep], qa[keep], qb[keep], fmr=fmr))


def validate_quality(
    model: nn.Module,
    val_rows: pd.DataFrame,
    teacher_embeddings: np.ndarray,
    *,
    label_norm: LabelNorm,
    quality_loss: AIKDLoss | None = None,
    max_shift: float = 0.1,
    units: str = "iod",
    seed: int = 0,
    landmark_tables: Mapping[str, pd.DataFrame] | None = None,
    pairs: pd.DataFrame | None = None,
    template: str | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    channels_last: bool = True,
    autocast: Any = contextlib.nullcontext,
    workers: int = 1,
) -> dict[str, float]:
    """Validation metrics of a student / averaged student / ``QualityModel``.

    * ``val_quality_loss``: L_q between the quality of the jittered face and the
      normalised label (needs ``val_rows['quality']``);
    * ``val_cosine``: mean cos(e, ê), e the teacher embedding of the reference-aligned
      face (``teacher_embeddings``, row-aligned), ê the model's of the jittered face;
    * ``val_pauc_fmr1e-2`` / ``val_pauc_fmr1e-3``: pAUC over ``pairs`` (default
      :func:`build_validation_pairs` on ``identity``), similarity = cosine of teacher
      embeddings, quality = the model's quality of the jittered faces; and for each
      ``landmark_tables[name]`` the same with faces aligned by that detector
      (``..._<name>``; images it missed drop out of the pairs).

    The jitter is fixed (seeded by ``seed`` and a reserved epoch key), so successive
    validations and models are compared on the same misalignments. Tuning code gets
    ``teacher_embeddings`` from :func:`teacher_embed_rows` (with the embeddings cache)
    and ``label_norm`` from the saved model (``QualityModel.label_norm``).
    """
    if len(val_rows) == 0:
        raise ValueError("no validation rows")
    device = torch.device(device)
    template = template or _model_template(model)
    loss = quality_loss or AIKDLoss(0.0, "l1")
    ds = DistillDataset(val_rows, template=template, max_shift=max_shift, units=units, seed=seed)
    if max_shift > 0:
        jittered = np.stack([ds.jittered_landmarks(read_rgb(f), VAL_EPOCH, i)
                             for i, f in enumerate(ds.files)])
    else:
        jittered = ds.landmarks.copy()
    was_training = model.training
    model.eval()
    try:
        kw = dict(device=device, batch_size=batch_size, channels_last=channels_last,
                  autocast=autocast, workers=workers)
        emb, q = _score_aligned(model, val_rows, jittered, template, **kw)
        out: dict[str, float] = {}
        if "quality" in val_rows.columns:
            target = torch.from_numpy(label_norm.transform(val_rows["quality"].to_numpy()))
            out["val_quality_loss"] = float(loss.quality_term(torch.from_numpy(q), target))
        e = torch.from_numpy(np.asarray(teacher_embeddings, dtype=np.float32))
        out["val_cosine"] = float(cosine(e, torch.from_numpy(emb)).mean())
        if pairs is None and "identity" in val_rows.columns:
            pairs = build_validation_pairs(val_rows["identity"].tolist(), seed)
        if pairs is not None and len(pairs):
            a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
            en = e.numpy() / np.linalg.norm(e.numpy(), axis=1, keepdims=True)
            sim = np.sum(en[a] * en[b], axis=1)
            mated = pairs["mated"].to_numpy(dtype=bool)
            out["val_pairs"] = float(len(pairs))
            sources = {"": q}
            for name, table in (landmark_tables or {}).items():
                _, sources[f"_{name}"] = _score_aligned(
                    model, val_rows, landmarks_for(val_rows, table), template, **kw
                )
            for suffix, qual in sources.items():
                for fmr, tag in ((1e-2, "1e-2"), (1e-3, "1e-3")):
                    out[f"val_pauc_fmr{tag}{suffix}"] = _pauc_or_nan(
                        sim, mated, qual[a], qual[b], fmr
                    )
    finally:
        model.train(was_training)
    return out


def _model_template(model: nn.Module) -> str:
    m = model.module if isinstance(model, AveragedModel) else model
    return str(getattr(m, "template", None) or m.backbone.template)


# --------------------------------------------------------------------------- helpers


def _checkpoints(ckpt_dir: Path) -> list[Path]:
    return sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir() and (p / "done").is_file())


def _save_checkpoint(accelerator: Accelerator, ckpt_dir: Path, step: int, keep: int) -> None:
    """save_state into step_N.tmp, then rename: an interrupted save never looks complete."""
    final = ckpt_dir / f"step_{step:07d}"
    tmp = ckpt_dir / f"step_{step:07d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "done").write_text(str(step))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in _checkpoints(ckpt_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _mlflow_active(accelerator: Accelerator) -> bool:
    return accelerator.is_main_process and mlflow.active_run() is not None


def _subset(rows: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    if n is None or n >= len(rows):
        return rows
    pick = np.sort(np.random.default_rng([int(seed), 11]).choice(len(rows), n, replace=False))
    return rows.iloc[pick].reset_index(drop=True)


def _prepare_rows(
    rows: pd.DataFrame, labels: Any, what: str, need_identity: bool = False
) -> pd.DataFrame:
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


# --------------------------------------------------------------------------- training


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
    on_validation: Callable[[int, dict[str, float], bool], None] | None = None,
) -> TrainResult:
    """Train one AI-KD (or baseline) quality model; see the module docstring."""
    cfg = config if isinstance(config, DistillConfig) else DistillConfig.from_dict(config)
    threads = torch.get_num_threads()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    try:
        return _train(cfg, train_rows, val_rows, Path(out_dir), labels=labels,
                      teacher_cache=teacher_cache, val_landmarks=val_landmarks, resume=resume,
                      stop_after=stop_after, on_validation=on_validation)
    finally:
        torch.set_num_threads(threads)


def _train(
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
    on_validation: Callable[[int, dict[str, float], bool], None] | None = None,
) -> TrainResult:
    t_start = time.perf_counter()
    timings = dict.fromkeys(("setup_s", "train_s", "train_cpu_s", "validation_s",
                             "checkpoint_s", "final_validation_s"), 0.0)
    # Rows and labels are checked on the whole split before anything is built or deleted.
    train_all = _prepare_rows(train_rows, labels, "train")
    val = _prepare_rows(val_rows, labels, "val", need_identity=True)
    label_norm = LabelNorm.fit(train_all["quality"].to_numpy(), cfg.label_norm)
    ckpt_dir = out / "checkpoints"
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision="bf16" if torch.cuda.is_available() else "no",
        gradient_accumulation_steps=cfg.grad_accum,
    )
    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume and ckpt_dir.exists():
            log.warning("resume=False: removing old checkpoints in %s", ckpt_dir)
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    set_seed(cfg.seed)

    train = _subset(train_all, cfg.train_subset, cfg.seed)
    teacher, student = build_models(cfg.backbone, cfg.backbone_weights, cfg.trainable, cfg.seed)
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
        with_x=train_e is None and need_teacher,
    )
    world = accelerator.num_processes
    probe = EpochStreamSampler(len(dataset), batch_size=cfg.batch_size, total_batches=0,
                               world_size=world)
    total_micro = int(cfg.epochs * probe.batches_per_epoch) // cfg.grad_accum * cfg.grad_accum
    total_steps = total_micro // cfg.grad_accum
    if total_steps < 1:
        raise ValueError(f"epochs={cfg.epochs} gives no optimizer step on {len(dataset)} images")
    swa_start_step = min(int(cfg.swa_start * total_steps), total_steps - 1)

    # ---- optimisation
    loss_fn = AIKDLoss(cfg.w, cfg.quality_loss, cfg.smooth_l1_beta)
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
    warm_sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warm) if warm > 0 else 1.0
    )
    swa_model = AveragedModel(student)
    student, optimizer = accelerator.prepare(student, optimizer)
    trainable = [p for p in accelerator.unwrap_model(student).parameters() if p.requires_grad]
    state = _TrainState(cfg.to_dict())
    accelerator.register_for_checkpointing(warm_sched, swa_sched, swa_model, state)

    if resume and _checkpoints(ckpt_dir):
        last = _checkpoints(ckpt_dir)[-1]
        accelerator.load_state(str(last))
        _check_resumable(state.config, cfg.to_dict(), last)
        state.config = cfg.to_dict()
        log.info("resumed from %s at step %d", last, state.step)
    elif resume:
        log.info("resume=True but no checkpoint in %s: starting fresh", ckpt_dir)

    sampler = EpochStreamSampler(
        len(dataset), batch_size=cfg.batch_size, total_batches=total_micro, seed=cfg.seed,
        rank=accelerator.process_index, world_size=world,
        start_batch=state.step * cfg.grad_accum,
    )
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * accelerator.process_index)
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
        collate_fn=collate, worker_init_fn=seed_worker, generator=gen,
        persistent_workers=False, prefetch_factor=4 if cfg.num_workers else None,
        pin_memory=device.type == "cuda",
    )

    use_mlflow = _mlflow_active(accelerator)
    bar = tqdm(total=total_steps, initial=state.step, disable=not (main and cfg.progress),
               desc="distill", unit="step", dynamic_ncols=True)
    images_per_step = cfg.batch_size * cfg.grad_accum * world
    trace: list[list[int]] = []
    micro: list[tuple[float, float, float]] = []
    t_step, cpu_step = time.perf_counter(), time.process_time()
    timings["setup_s"] = t_step - t_start
    student.train()
    teacher.train()  # a no-op by design; kept to show the teacher cannot be switched
    for batch in loader:
        if cfg.trace:
            trace += batch_items(batch)
        with accelerator.accumulate(student):
            x_hat = to_float_input(batch["x_hat"].to(device), cfg.channels_last)
            q = batch["q"].to(device)
            with accelerator.autocast():
                if "e" in batch:
                    e = batch["e"].to(device)
                elif need_teacher:
                    e = teacher(to_float_input(batch["x"].to(device), cfg.channels_last))
                else:
                    e = None
                e_hat, q_hat = student(x_hat)
            terms = loss_fn(e_hat, q_hat, q, e)
            accelerator.backward(terms.total)
            if accelerator.sync_gradients and cfg.clip_grad_norm > 0:
                accelerator.clip_grad_norm_(trainable, cfg.clip_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        micro.append(tuple(float(t.detach()) for t in terms))
        if not accelerator.sync_gradients:
            continue

        # ---- one optimizer step done
        lr = optimizer.param_groups[0]["lr"]
        state.step += 1
        step = state.step
        if step > swa_start_step and (step - swa_start_step) % cfg.swa_every == 0:
            swa_model.update_parameters(accelerator.unwrap_model(student))
        if step >= swa_start_step:
            swa_sched.step()
        else:
            warm_sched.step()
        means = torch.tensor(micro, dtype=torch.float64, device=device).mean(dim=0)
        means = accelerator.reduce(means, reduction="mean") if world > 1 else means
        micro = []
        now = time.perf_counter()
        ips = images_per_step / max(now - t_step, 1e-9)
        timings["train_s"] += now - t_step
        timings["train_cpu_s"] += time.process_time() - cpu_step
        row = {"step": step, "epoch": step * cfg.grad_accum / probe.batches_per_epoch,
               "loss": float(means[0]), "loss_consistency": float(means[1]),
               "loss_quality": float(means[2]), "lr": float(lr), "images_per_s": ips}
        state.history.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{ips:.1f}")
        if use_mlflow and (step % cfg.log_every == 0 or step == total_steps):
            mlflow.log_metrics(
                {k: v for k, v in row.items() if k != "step" and math.isfinite(v)}, step=step
            )
        t_aside = time.perf_counter()
        if cfg.val_every and step % cfg.val_every == 0 and step < total_steps:
            if main:
                sub = _subset(val, cfg.val_subset, cfg.seed)
                sub_e = val_e[_positions(val, sub)]
                metrics = validate_quality(
                    accelerator.unwrap_model(student), sub, sub_e, label_norm=label_norm,
                    quality_loss=loss_fn, max_shift=cfg.val_max_shift, units=cfg.jitter_units,
                    seed=cfg.seed, landmark_tables=val_landmarks, device=device,
                    batch_size=cfg.batch_size, channels_last=cfg.channels_last,
                    autocast=accelerator.autocast, workers=cfg.num_workers,
                )
                if use_mlflow:
                    mlflow.log_metrics(_finite(metrics), step=step)
                bar.write(f"step {step}: " + _fmt(metrics))
                if on_validation is not None:
                    on_validation(step, metrics, False)
            accelerator.wait_for_everyone()
        t_ckpt = time.perf_counter()
        timings["validation_s"] += t_ckpt - t_aside
        stopping = stop_after is not None and step >= stop_after and step < total_steps
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or stopping:
            _save_checkpoint(accelerator, ckpt_dir, step, cfg.keep_checkpoints)
        # images/s counts training only, not saves/validation
        t_step, cpu_step = time.perf_counter(), time.process_time()
        timings["checkpoint_s"] += t_step - t_ckpt
        if stopping:
            break
    bar.close()
    if state_digest(teacher.backbone) != teacher_digest:
        raise RuntimeError("the teacher's weights or buffers changed during training")
    completed = state.step >= total_steps
    history = pd.DataFrame(state.history)

    if cfg.trace:
        _write_trace(out, accelerator, trace, swa_model, student)
    if not completed:
        return TrainResult(out, None, False, state.step, total_steps, {}, history, skipped,
                           label_norm, time.perf_counter() - t_start, len(dataset),
                           teacher_digest, timings, cfg.to_dict())

    # ---- finish: BN statistics of the average, final checkpoint, validation, model file
    t_finish = time.perf_counter()
    if has_batchnorm(swa_model):
        _update_bn(swa_model, dataset, cfg, device)
    if not _checkpoints(ckpt_dir) or _checkpoints(ckpt_dir)[-1].name != f"step_{state.step:07d}":
        _save_checkpoint(accelerator, ckpt_dir, state.step, cfg.keep_checkpoints)
    t_val = time.perf_counter()
    timings["checkpoint_s"] += t_val - t_finish
    metrics: dict[str, float] = {}
    model_path: Path | None = None
    if main:
        metrics = validate_quality(
            swa_model, val, val_e, label_norm=label_norm, quality_loss=loss_fn,
            max_shift=cfg.val_max_shift, units=cfg.jitter_units, seed=cfg.seed,
            landmark_tables=val_landmarks, device=device, batch_size=cfg.batch_size,
            channels_last=cfg.channels_last, autocast=accelerator.autocast,
            workers=cfg.num_workers,
        )
        timings["final_validation_s"] = time.perf_counter() - t_val
        model_path = save_quality_model(
            out / "model.pt", swa_model.module, backbone_name=cfg.backbone,
            label_norm=label_norm, config=cfg.to_dict(),
            extra={"steps": state.step, "train_images": len(dataset),
                   "swa_averaged": int(swa_model.n_averaged), "val_metrics": metrics},
        )
        history.to_csv(out / "history.csv", index=False)
        skipped.to_csv(out / "skipped.csv", index=False)
        summary = {"metrics": metrics, "steps": state.step, "train_images": len(dataset),
                   "skipped": len(skipped), "swa_averaged": int(swa_model.n_averaged),
                   "median_images_per_s": float(history["images_per_s"].median()),
                   "seconds": time.perf_counter() - t_start,
                   "timings": {k: round(v, 2) for k, v in timings.items()}}
        (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        if use_mlflow:
            mlflow.log_metrics(_finite({f"final_{k}": v for k, v in metrics.items()}),
                               step=state.step)
            mlflow.log_metrics({"skipped_images": float(len(skipped)),
                                "train_images": float(len(dataset)),
                                **{f"time_{k}": v for k, v in timings.items()}},
                               step=state.step)
            mlflow.log_artifact(str(model_path), artifact_path="distill")
            mlflow.log_artifact(str(out / "metrics.json"), artifact_path="distill")
        log.info("distill done: %s", _fmt(metrics))
        if on_validation is not None:
            on_validation(state.step, metrics, True)
    accelerator.wait_for_everyone()
    return TrainResult(out, model_path or out / "model.pt", True, state.step, total_steps,
                       metrics, history, skipped, label_norm, time.perf_counter() - t_start,
                       len(dataset), teacher_digest, timings, cfg.to_dict())


def batch_items(batch: Mapping[str, torch.Tensor]) -> list[list[int]]:
    return [[int(e), int(i)] for e, i in zip(batch["epoch"], batch["index"], strict=True)]


def _positions(full: pd.DataFrame, sub: pd.DataFrame) -> np.ndarray:
    where = pd.Series(np.arange(len(full)), index=full["path"])
    return where.loc[sub["path"]].to_numpy()


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if math.isfinite(v)}


def _fmt(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def _check_resumable(saved: Mapping[str, Any], current: Mapping[str, Any], where: Path) -> None:
    diff = sorted(k for k in set(saved) | set(current)
                  if k not in _RESUMABLE_CHANGES and saved.get(k) != current.get(k))
    if diff:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff)
        raise ValueError(f"cannot resume from {where}: the config changed ({detail})")


@torch.no_grad()
def _update_bn(swa_model: AveragedModel, dataset: DistillDataset, cfg: DistillConfig,
               device: torch.device) -> None:
    """Recompute BatchNorm statistics of the averaged weights on (jittered) training faces."""
    n = min(len(dataset), 50 * cfg.batch_size)
    idx = np.random.default_rng([cfg.seed, 13]).choice(len(dataset), n, replace=False)

    def batches() -> Iterator[torch.Tensor]:
        for lo in range(0, n, cfg.batch_size):
            items = [dataset[(0, int(i))] for i in idx[lo : lo + cfg.batch_size]]
            yield to_float_input(collate(items)["x_hat"].to(device), cfg.channels_last)

    torch.optim.swa_utils.update_bn(batches(), swa_model)


def _write_trace(out: Path, accelerator: Accelerator, seen: list[list[int]],
                 swa_model: AveragedModel, student: nn.Module) -> None:
    d = out / "trace"
    d.mkdir(parents=True, exist_ok=True)
    info = {"rank": accelerator.process_index, "world_size": accelerator.num_processes,
            "seen": seen, "student_digest": state_digest(accelerator.unwrap_model(student)),
            "swa_digest": state_digest(swa_model.module)}
    (d / f"rank{accelerator.process_index}.json").write_text(json.dumps(info))


# --------------------------------------------------------------------------- command line


def _read_rows(specs: Sequence[str], split: str) -> pd.DataFrame:
    """Rows from ``MANIFEST:LANDMARKS`` pairs (one split) or ready rows parquet files."""
    from aikd.distill.data import load_rows

    frames = []
    for spec in specs:
        if ":" in spec:
            man, lms = spec.split(":", 1)
            frames.append(load_rows(man, lms, split))
        else:
            frames.append(pd.read_parquet(spec))
    return pd.concat(frames, ignore_index=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m aikd.distill.train`` (also under ``accelerate launch``)."""
    from aikd.config import apply_overrides

    ap = argparse.ArgumentParser(description="Train an AI-KD quality model.")
    ap.add_argument("--config", help="YAML with distill settings (or a params.yaml)")
    ap.add_argument("--section", default=None, help="section of --config, e.g. 'distill'")
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value (YAML-parsed)")
    ap.add_argument("--data", action="append", default=[], metavar="MANIFEST:LANDMARKS",
                    help="manifest parquet and reference landmarks; splits train/val")
    ap.add_argument("--train-rows", action="append", default=[], help="rows parquet (train)")
    ap.add_argument("--val-rows", action="append", default=[], help="rows parquet (val)")
    ap.add_argument("--labels", help="label file: parquet/CSV with path, quality")
    ap.add_argument("--teacher-cache", action="append", default=None,
                    help="embeddings parquet of reference-aligned images")
    ap.add_argument("--val-landmarks", action="append", default=[], metavar="NAME=PARQUET")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--stop-after", type=int, default=None, help="stop after N steps")
    ap.add_argument("--mlflow", action="store_true", help="log into an MLflow stage run")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file

    values: dict[str, Any] = {}
    if args.config:
        import yaml

        values = yaml.safe_load(Path(args.config).read_text()) or {}
        if args.section:
            values = values.get(args.section) or {}
    cfg = DistillConfig.from_dict(apply_overrides(values, args.set))
    if not (args.data or args.train_rows) or not (args.data or args.val_rows):
        ap.error("give --data MANIFEST:LANDMARKS or both --train-rows and --val-rows")
    train_rows = pd.concat(
        ([_read_rows(args.data, "train")] if args.data else [])
        + [pd.read_parquet(p) for p in args.train_rows], ignore_index=True)
    val_rows = pd.concat(
        ([_read_rows(args.data, "val")] if args.data else [])
        + [pd.read_parquet(p) for p in args.val_rows], ignore_index=True)
    val_lms = {}
    for spec in args.val_landmarks:
        name, path = spec.split("=", 1)
        val_lms[name] = pd.read_parquet(path)
    run = contextlib.nullcontext()
    is_main = int(__import__("os").environ.get("RANK", "0")) == 0
    if args.mlflow and is_main:
        from aikd.tracking import stage_run

        run = stage_run("distill", {}, run_name=f"distill-{Path(args.out_dir).name}",
                        log_params={"distill": cfg.to_dict()})
    with run:
        result = train_distill(
            cfg, train_rows, val_rows, args.out_dir, labels=args.labels,
            teacher_cache=args.teacher_cache, val_landmarks=val_lms or None,
            resume=args.resume, stop_after=args.stop_after,
        )
    if is_main:
        print(json.dumps({"completed": result.completed, "steps": result.steps,
                          "metrics": result.metrics, "model": str(result.model_path)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
