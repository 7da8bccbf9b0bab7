"""Validation of a student: quality loss, teacher agreement and pAUC on held-out people.

The same function validates during training, at the end of a run and in tuning trials,
so the numbers the registry and the search compare are computed one way.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from aikd.data.images import read_rgb
from aikd.distill.data import VAL_EPOCH, DistillDataset, LabelNorm, landmarks_for
from aikd.distill.learnability import learnability_metrics
from aikd.distill.loss import AIKDLoss
from aikd.distill.model import QualityModel, cosine
from aikd.evaluation.edc import UndefinedPAUCWarning, pauc
from aikd.faces import iter_faces, row_files, to_float_input
from aikd.naming import VALIDATION_FMRS, pauc_metric


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
    train_fit: tuple[np.ndarray, np.ndarray | None] | None = None,
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
    * with ``train_fit = (training targets, training teacher embeddings or None)``, the
      learnability figures of :func:`aikd.distill.learnability.learnability_metrics` on the
      faces as aligned (no jitter): the student against a constant and a ridge probe.

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
        if train_fit is not None and "quality" in val_rows.columns:
            q_aligned = q if max_shift <= 0 else _score_aligned(
                model, val_rows, ds.landmarks, template, **kw)[1]
            out.update(learnability_metrics(
                q_aligned, label_norm.transform(val_rows["quality"].to_numpy()), train_fit[0],
                train_fit[1], np.asarray(teacher_embeddings, dtype=np.float32)))
        if pairs is None and "identity" in val_rows.columns:
            pairs = build_validation_pairs(val_rows["identity"].tolist(), seed)
        if pairs is not None and len(pairs):
            out.update(_pauc_metrics(model, val_rows, e.numpy(), q, pairs, landmark_tables,
                                     template, kw))
    finally:
        model.train(was_training)
    return out


def _pauc_metrics(model: nn.Module, val_rows: pd.DataFrame, e: np.ndarray, q: np.ndarray,
                  pairs: pd.DataFrame, landmark_tables: Mapping[str, pd.DataFrame] | None,
                  template: str, kw: dict[str, Any]) -> dict[str, float]:
    """``val_pairs`` and the pAUC of the jittered faces' quality, then of each detector's."""
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    en = e / np.linalg.norm(e, axis=1, keepdims=True)
    sim = np.sum(en[a] * en[b], axis=1)
    mated = pairs["mated"].to_numpy(dtype=bool)
    out = {"val_pairs": float(len(pairs))}
    sources: dict[str | None, np.ndarray] = {None: q}
    for name, table in (landmark_tables or {}).items():
        _, sources[name] = _score_aligned(
            model, val_rows, landmarks_for(val_rows, table), template, **kw
        )
    for detector, qual in sources.items():
        for fmr in VALIDATION_FMRS:
            out[pauc_metric(fmr, detector)] = _pauc_or_nan(sim, mated, qual[a], qual[b], fmr)
    return out


def _model_template(model: nn.Module) -> str:
    m = model.module if isinstance(model, AveragedModel) else model
    return str(getattr(m, "template", None) or m.backbone.template)
