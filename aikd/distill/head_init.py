"""Linear probe, then fine-tune (LP-FT, Kumar et al., ICLR 2022): the quality head's last
layer is fitted on the frozen teacher's embeddings of the training images before any
backbone step.

Why: with a random head, the first steps' arbitrary gradients flow into the pretrained
backbone and distort the features the quality is read from, and the students ended below
a ridge probe on the frozen embedding (docs/recipe.md). The student's backbone starts as
an exact copy of the teacher, so the teacher embeddings are the student's own features at
step 0: a head fitted on them makes the student start at the probe's fit, and fine-tuning
refines it instead of first undoing a random head.

The fit is closed form. The first layer keeps its seeded random directions but reads the
head input standardised on the training images and scaled by ``gain`` (folded into its
weights): face embeddings cluster around one direction, so per-dimension variation is
~0.04 and, unscaled, the hidden features vary so little that the fitted last layer needs
weights in the thousands, whose gradients blew the head up within two SGD steps even at
lr 5e-4 (docs/recipe.md). ``gain`` 0.1 keeps the pre-activations small, so GELU is near
linear and the head starts as a nearly linear probe (SDD-FIQA rho 0.69 vs the ridge
probe's 0.71 on validation people; gain 1 bends the features and gives 0.58-0.63). The
hidden features are standardised and the last Linear is the ridge regression of the
normalised labels on them, penalty by exact leave-one-out on the training images
(:func:`aikd.distill.learnability.fit_ridge`), the standardisation folded into its
weights. A squared-error fit, not the training L1: an iterative L1 fit of the whole MLP
overfits (rho 0.62 for SDD-FIQA).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from aikd.distill.learnability import fit_ridge, label_fit

__all__ = ["HEAD_INITS", "ProbeFit", "fit_head", "fit_head_ridge", "head_predict",
           "initialise_head"]

HEAD_INITS: tuple[str, ...] = ("probe", "ridge", "random")


@dataclass(frozen=True)
class ProbeFit:
    """The ridge fit of the head's last layer: its penalty and its fit on training images."""

    alpha: float
    train_l1: float
    train_spearman: float


def _linears(head: nn.Module) -> tuple[list[nn.Module], nn.Linear]:
    """(every layer before the last Linear, the last Linear) of a Sequential head."""
    layers = list(head.children())
    if not layers or not isinstance(layers[-1], nn.Linear):
        raise ValueError(f"{type(head).__name__} must end in a Linear layer to be probed")
    return layers[:-1], layers[-1]


def _head_input(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the head's first Linear reads: its own input transform (unit length), if any."""
    return head.features(x) if hasattr(head, "features") else x


@torch.no_grad()
def _hidden(head: nn.Module, features: np.ndarray) -> np.ndarray:
    """The last Linear's input for raw embeddings (the head's own input transform first)."""
    body, last = _linears(head)
    p = last.weight
    x = torch.from_numpy(np.asarray(features, dtype=np.float32)).to(p.device, p.dtype)
    h = _head_input(head, x)
    for layer in body:
        h = layer(h)
    return h.double().cpu().numpy()


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


#: Scale of the first layer's pre-activations on standardised input (see the docstring).
PROBE_GAIN = 0.1


@torch.no_grad()
def _standardise_first_layer(head: nn.Module, x: np.ndarray, gain: float) -> None:
    """First Linear reads ``gain * (f - mean) / sd`` of the head input f, folded in."""
    body, _ = _linears(head)
    first = next((m for m in body if isinstance(m, nn.Linear)), None)
    if first is None or first.bias is None:
        raise ValueError("the head needs a first Linear with a bias to standardise its input")
    p = first.weight
    t = torch.from_numpy(np.asarray(x, dtype=np.float32)).to(p.device, p.dtype)
    f = _head_input(head, t).double().cpu().numpy()
    mu, sd = f.mean(axis=0), f.std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    w = gain * first.weight.double().cpu().numpy() / sd
    b = gain * first.bias.double().cpu().numpy() - w @ mu
    first.weight.copy_(torch.from_numpy(w).to(first.weight))
    first.bias.copy_(torch.from_numpy(b).to(first.bias))


@torch.no_grad()
def fit_head(head: nn.Module, features: np.ndarray, targets: np.ndarray,
             gain: float = PROBE_GAIN) -> ProbeFit:
    """Fit ``head`` in place on raw embeddings and normalised targets: first layer
    standardised and scaled by ``gain``, last Linear the ridge regression of ``targets`` on
    the hidden features; see the module docstring."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"features {x.shape} and targets {y.shape} do not match")
    ok = np.isfinite(x).all(axis=1) & np.isfinite(y)
    if ok.sum() < 10:
        raise ValueError(f"the head probe needs >= 10 rows with an embedding and a label, "
                         f"got {int(ok.sum())}")
    _standardise_first_layer(head, x[ok], gain)
    h = _hidden(head, x[ok])
    mu, sd = h.mean(axis=0), h.std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    w, b, alpha = fit_ridge((h - mu) / sd, y[ok], unit=False)
    _, last = _linears(head)
    w_raw = w / sd  # y = ((h - mu) / sd) @ w + b = h @ (w / sd) + (b - mu @ (w / sd))
    last.weight.copy_(torch.from_numpy(w_raw).reshape(last.weight.shape).to(last.weight))
    last.bias.copy_(torch.tensor([b - float(mu @ w_raw)]).to(last.bias))
    l1, rho = label_fit(head_predict(head, x[ok]), y[ok])
    return ProbeFit(float(alpha), l1, rho)


@torch.no_grad()
def fit_head_ridge(head: nn.Module, features: np.ndarray, targets: np.ndarray) -> ProbeFit:
    """Make ``head`` compute exactly the ridge probe on its input (the learnability floor),
    in place; its GELU stays free to bend once fine-tuning moves the weights.

    Why exact: the GELU probe of :func:`fit_head` starts SDD-FIQA's student at rho 0.69,
    below the ridge probe's 0.71 on the same embedding, so fine-tuning starts under the
    floor it is asked to beat. GELU(a) - GELU(-a) = a for every a, so a hidden layer of
    mirrored pairs is linear through the pair: the first Linear reads
    ``[s Q (f - mu); -s Q (f - mu)]`` (Q an orthogonal basis from its own seeded random
    weights, s scaling the pre-activations to unit RMS) and the last Linear
    ``[u, -u]`` with ``u = Q w / s``, which gives ``w . f + c``, the ridge of the
    normalised labels on the head input f (penalty by exact leave-one-out on the training
    images, :func:`aikd.distill.learnability.fit_ridge`). Needs hidden width 2 x input.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"features {x.shape} and targets {y.shape} do not match")
    ok = np.isfinite(x).all(axis=1) & np.isfinite(y)
    if ok.sum() < 10:
        raise ValueError(f"the head probe needs >= 10 rows with an embedding and a label, "
                         f"got {int(ok.sum())}")
    body, last = _linears(head)
    first = next((m for m in body if isinstance(m, nn.Linear)), None)
    if first is None or first.bias is None or first.out_features != 2 * first.in_features:
        raise ValueError("head_init 'ridge' needs a first Linear(d, 2d) with a bias")
    p = first.weight
    f = _head_input(head, torch.from_numpy(x[ok].astype(np.float32)).to(p.device, p.dtype))
    f = f.double().cpu().numpy()
    w, c, alpha = fit_ridge(f, y[ok], unit=False)
    d = f.shape[1]
    mu = f.mean(axis=0)
    scale = 1.0 / max(float(np.sqrt(f.var(axis=0).mean())), 1e-12)
    q, _ = np.linalg.qr(first.weight.double().cpu().numpy()[:d].T)  # orthogonal, seeded
    a = scale * q.T  # row i of the first half: the i-th basis direction, scaled
    first.weight.copy_(torch.from_numpy(np.vstack([a, -a])).to(first.weight))
    first.bias.copy_(torch.from_numpy(np.concatenate([-(a @ mu), a @ mu])).to(first.bias))
    u = (q.T @ w) / scale
    last.weight.copy_(torch.from_numpy(np.concatenate([u, -u])).reshape(last.weight.shape)
                      .to(last.weight))
    last.bias.copy_(torch.tensor([c + float(w @ mu)]).to(last.bias))
    l1, rho = label_fit(head_predict(head, x[ok]), y[ok])
    return ProbeFit(float(alpha), l1, rho)


def initialise_head(
    kind: str,
    head: nn.Module,
    train_features: np.ndarray | None,
    train_targets: np.ndarray,
    *,
    val_features: np.ndarray | None = None,
    val_targets: np.ndarray | None = None,
) -> dict[str, float]:
    """Initialise the student's head (``probe``: :func:`fit_head`; ``ridge``:
    :func:`fit_head_ridge`; ``random``: keep the seeded random init) and return what it
    predicts before fine-tuning, as metrics:
    ``init_val_l1`` / ``init_val_spearman`` on validation people (when their embeddings and
    targets are given: the student's step-0 quality of aligned faces), and for a probe
    ``probe_alpha``, ``probe_train_l1`` and ``probe_train_spearman``."""
    if kind not in HEAD_INITS:
        raise ValueError(f"head_init must be one of {HEAD_INITS}, got {kind!r}")
    out: dict[str, float] = {}
    if kind in ("probe", "ridge"):
        if train_features is None:
            raise ValueError(f"head_init={kind!r} needs the teacher embeddings of the "
                             "training images")
        fitter = fit_head if kind == "probe" else fit_head_ridge
        fit = fitter(head, train_features, train_targets)
        out.update(probe_alpha=fit.alpha, probe_train_l1=fit.train_l1,
                   probe_train_spearman=fit.train_spearman)
    if val_features is not None and val_targets is not None:
        out["init_val_l1"], out["init_val_spearman"] = label_fit(
            head_predict(head, val_features), np.asarray(val_targets, dtype=np.float64))
    return out
