"""Linear probe, then fine-tune (LP-FT, Kumar et al., ICLR 2022): the quality head is
fitted on the frozen teacher's embeddings of the training images before any backbone step.

Why: with a random head, the first steps' large, arbitrary gradients flow into the
pretrained backbone and distort the features the quality is read from, so a fine-tuned
student can end below a probe on the frozen embedding (docs/recipe.md). The student's
backbone starts as an exact copy of the teacher, so the teacher embeddings are the
student's own features at step 0: a head fitted on them makes the student start at the
probe's fit, and fine-tuning refines it instead of first undoing a random head.

The fit is the training objective's quality term (L1 or smooth L1 on the normalised
labels), full-batch AdamW on standardised features (seconds for ~10k x 128 on a CPU), its
number of steps chosen by early stopping on held-out TRAINING people, then refitted on
every training image for that many steps. The standardisation is folded into the head's
first linear layer, so the head keeps its architecture and reads the raw embedding.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from aikd.distill.learnability import label_fit

__all__ = ["HEAD_INITS", "HeadInit", "ProbeFit", "fit_head", "head_predict", "initialise_head"]

HeadInit = Literal["probe", "random"]
HEAD_INITS: tuple[str, ...] = ("probe", "random")

#: ``loss(prediction, target) -> scalar tensor``: the quality term of the training loss.
QualityTerm = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ProbeFit:
    """How the head was fitted: the step count early stopping chose and its held-out fit."""

    steps: int
    holdout_l1: float
    holdout_spearman: float
    train_spearman: float  # of the final head (refitted on every training image)


def _first_linear(head: nn.Module) -> nn.Linear:
    for m in head.modules():
        if isinstance(m, nn.Linear):
            return m
    raise ValueError(f"{type(head).__name__} has no Linear layer to fold the scaling into")


@torch.no_grad()
def head_predict(head: nn.Module, features: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """The head's (normalised) quality of raw embeddings, float64; NaN rows stay NaN."""
    x = np.asarray(features, dtype=np.float32)
    out = np.full(x.shape[0], np.nan)
    ok = np.flatnonzero(np.isfinite(x).all(axis=1))
    p = next(head.parameters())
    was_training = head.training
    head.eval()
    try:
        for lo in range(0, ok.size, batch_size):
            idx = ok[lo : lo + batch_size]
            xb = torch.from_numpy(x[idx]).to(device=p.device, dtype=p.dtype)
            out[idx] = head(xb).squeeze(-1).float().cpu().numpy()
    finally:
        head.train(was_training)
    return out


def _holdout_mask(n: int, groups: Sequence[Any] | None, fraction: float,
                  rng: np.random.Generator) -> np.ndarray:
    """True for the held-out rows: whole groups (people) when given, else single rows."""
    if groups is None:
        mask = np.zeros(n, dtype=bool)
        mask[rng.choice(n, max(1, round(fraction * n)), replace=False)] = True
        return mask
    codes, uniq = _codes(groups)
    if len(uniq) < 2:
        raise ValueError("a held-out split by groups needs at least two groups")
    out = rng.permutation(len(uniq))[: max(1, round(fraction * len(uniq)))]
    return np.isin(codes, out)


def _codes(groups: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    uniq, codes = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    return codes, uniq


def _train(head: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: QualityTerm, *,
           steps: int, lr: float, weight_decay: float, eval_every: int,
           x_hold: torch.Tensor | None = None, y_hold: torch.Tensor | None = None,
           patience: int = 0) -> tuple[int, float]:
    """Full-batch AdamW for ``steps`` steps; with a held-out set, stop after ``patience``
    evaluations without improvement and return (best step, its held-out loss) with the
    head left at that best state."""
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    best = (0, math.inf)
    best_state = copy.deepcopy(head.state_dict())
    stale = 0
    head.train()
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        loss(head(x).squeeze(-1), y).backward()
        opt.step()
        if x_hold is None or y_hold is None or step % eval_every:
            continue
        with torch.no_grad():
            held = float(loss(head(x_hold).squeeze(-1), y_hold))
        if held < best[1] - 1e-6:
            best, stale = (step, held), 0
            best_state = copy.deepcopy(head.state_dict())
        else:
            stale += 1
            if patience and stale >= patience:
                break
    if x_hold is not None:
        head.load_state_dict(best_state)
        return best
    return steps, math.nan


def fit_head(
    head: nn.Module,
    features: np.ndarray,
    targets: np.ndarray,
    loss: QualityTerm,
    *,
    groups: Sequence[Any] | None = None,
    seed: int = 0,
    holdout: float = 0.15,
    max_steps: int = 2000,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    eval_every: int = 10,
    patience: int = 20,
) -> ProbeFit:
    """Fit ``head`` in place on (raw embedding, normalised target) pairs; see the module
    docstring. ``groups`` (e.g. identities) keeps each person on one side of the held-out
    split, so the stopping step is chosen for unseen people, as validation measures."""
    x_all = np.asarray(features, dtype=np.float64)
    y_all = np.asarray(targets, dtype=np.float64)
    if x_all.ndim != 2 or y_all.shape != (x_all.shape[0],):
        raise ValueError(f"features {x_all.shape} and targets {y_all.shape} do not match")
    ok = np.isfinite(x_all).all(axis=1) & np.isfinite(y_all)
    if ok.sum() < 10:
        raise ValueError(f"the head probe needs >= 10 rows with an embedding and a label, "
                         f"got {int(ok.sum())}")
    x_np, y_np = x_all[ok], y_all[ok]
    g = None if groups is None else [v for v, keep in zip(groups, ok, strict=True) if keep]
    mu, sd = x_np.mean(axis=0), x_np.std(axis=0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    xs = torch.from_numpy(((x_np - mu) / sd).astype(np.float32))
    ys = torch.from_numpy(y_np.astype(np.float32))
    rng = np.random.default_rng([int(seed), 17])
    hold = _holdout_mask(len(ys), g, holdout, rng)

    start = copy.deepcopy(head).float().cpu()
    with torch.random.fork_rng(devices=[]):  # the run's random streams stay untouched
        torch.manual_seed(int(seed))
        probe = copy.deepcopy(start)
        steps, held_l1 = _train(probe, xs[~hold], ys[~hold], loss, steps=max_steps, lr=lr,
                                weight_decay=weight_decay, eval_every=eval_every,
                                x_hold=xs[hold], y_hold=ys[hold], patience=patience)
        with torch.no_grad():
            held_pred = probe(xs[hold]).squeeze(-1).numpy()
        held_rho = label_fit(held_pred, y_np[hold])[1]
        final = copy.deepcopy(start)
        if steps:
            _train(final, xs, ys, loss, steps=steps, lr=lr, weight_decay=weight_decay,
                   eval_every=eval_every)
    _fold_standardisation(final, mu, sd)
    p = next(head.parameters())
    head.load_state_dict({k: v.to(device=p.device, dtype=p.dtype)
                          for k, v in final.state_dict().items()})
    train_rho = label_fit(head_predict(head, x_np), y_np)[1]
    return ProbeFit(int(steps), float(held_l1), float(held_rho), float(train_rho))


@torch.no_grad()
def _fold_standardisation(head: nn.Module, mu: np.ndarray, sd: np.ndarray) -> None:
    """Make ``head(raw)`` equal ``head((raw - mu) / sd)``: W' = W / sd, b' = b - W' mu."""
    lin = _first_linear(head)
    w = lin.weight.double() / torch.from_numpy(sd)
    lin.weight.copy_(w.to(lin.weight.dtype))
    if lin.bias is None:
        raise ValueError("the head's first Linear needs a bias to absorb the centring")
    lin.bias.copy_((lin.bias.double() - w @ torch.from_numpy(mu)).to(lin.bias.dtype))


def initialise_head(
    kind: str,
    head: nn.Module,
    loss: QualityTerm,
    train_features: np.ndarray | None,
    train_targets: np.ndarray,
    *,
    groups: Sequence[Any] | None = None,
    seed: int = 0,
    val_features: np.ndarray | None = None,
    val_targets: np.ndarray | None = None,
) -> dict[str, float]:
    """Initialise the student's head (``probe``: :func:`fit_head`; ``random``: keep the
    seeded random init) and return what the head predicts before fine-tuning, as metrics:
    ``init_val_l1`` / ``init_val_spearman`` on validation people (when their embeddings and
    targets are given; the student's step-0 quality of aligned faces), and for a probe
    ``probe_steps``, ``probe_holdout_spearman`` and ``probe_train_spearman``."""
    if kind not in HEAD_INITS:
        raise ValueError(f"head_init must be one of {HEAD_INITS}, got {kind!r}")
    out: dict[str, float] = {}
    if kind == "probe":
        if train_features is None:
            raise ValueError("head_init='probe' needs the teacher embeddings of the training "
                             "images")
        fit = fit_head(head, train_features, train_targets, loss, groups=groups, seed=seed)
        out.update(probe_steps=float(fit.steps), probe_holdout_spearman=fit.holdout_spearman,
                   probe_train_spearman=fit.train_spearman)
    if val_features is not None and val_targets is not None:
        out["init_val_l1"], out["init_val_spearman"] = label_fit(
            head_predict(head, val_features), np.asarray(val_targets, dtype=np.float64))
    return out
