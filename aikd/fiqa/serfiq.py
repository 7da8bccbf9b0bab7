"""SER-FIQ unsupervised quality (Terhörst et al., CVPR 2020) for a frozen backbone.

SER-FIQ runs an image through the network T times with dropout and calls the image good
when the T embeddings barely move: q = 2 / (1 + exp(mean pairwise distance)) of the
L2-normalised embeddings. The paper applies dropout where the network was trained with it.
dlib's ResNet never saw dropout, so *where* we perturb decides whether the spread tracks
quality; see docs/serfiq-dropout.md for the measured placements and rates.

Placements (everything before the dropout point runs once per image; only the tail runs
T times, batched as image x pass):

* ``"pooled"``: element dropout on the 256-D pooled features, tail = the final linear layer.
  Works with any backbone exposing ``features`` / ``embed_from_features``.
* ``"stage4"`` / ``"stage3"`` / ``"stage2"`` / ``"stage1"``: dropout on the input of the
  last / 2nd / 3rd / 4th-from-last down-sampling block (dlib: 4x4x256, 8x8x128, 17x17x64,
  35x35x32 maps). Earlier = more of the network re-run T times (dlib tail per pass:
  ~3, 50, 100 and 200 MMAC vs ~270 MMAC for a full forward).

Map placements need a backbone with a ``blocks`` ``nn.Sequential`` of residual units whose
down-sampling ones carry ``down=True`` (``DlibResNet``), and ``features`` = global mean of
the last block's output. That assumption is checked on every batch: the tail without
dropout must reproduce ``features``, or a RuntimeError says the structure differs.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aikd.fiqa.batches import as_face_batch, eval_batches
from aikd.models.fused import FusedDlibResNet, fused_dlib

__all__ = [
    "DEFAULT_DROPOUT",
    "DEFAULT_PLACEMENT",
    "DEFAULT_RATE",
    "PLACEMENTS",
    "DropoutKind",
    "Placement",
    "serfiq_scores",
]

Placement = Literal["pooled", "stage4", "stage3", "stage2", "stage1"]
DropoutKind = Literal["channel", "element"]
PLACEMENTS: tuple[str, ...] = ("pooled", "stage4", "stage3", "stage2", "stage1")

#: Chosen on LFW/YTF validation identities (docs/serfiq-dropout.md).
DEFAULT_PLACEMENT: Placement = "stage3"
DEFAULT_RATE: float = 0.02
DEFAULT_DROPOUT: DropoutKind = "element"

# Max rows (image x pass) per tail call: bounds memory for the T-fold batch.
_TAIL_ROWS = 2048
_CHECK_RTOL = 1e-4
_D2_ROUNDING = 1e-12


def _capture_index(model: nn.Module, placement: str) -> int | None:
    """Index into ``model.blocks`` whose *input* is perturbed; None for ``pooled``."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if placement == "pooled":
        return None
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        raise ValueError(
            f"placement {placement!r} needs a backbone with a `blocks` nn.Sequential "
            f"(e.g. dlib_resnet); {type(model).__name__} has none, use placement='pooled'"
        )
    downs = [i for i, b in enumerate(blocks) if getattr(b, "down", False)]
    need = 5 - int(placement[-1])  # stage4 -> last down block, stage3 -> 2nd from last, ...
    if len(downs) < need:
        raise ValueError(
            f"{type(model).__name__} has {len(downs)} down blocks; {placement} needs {need}"
        )
    return downs[-need]


def _trunk(model: nn.Module, x: torch.Tensor, idx: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``features`` once; return (pooled features, tensor at the dropout point)."""
    if idx is None:
        f = model.features(x)
        return f, f
    blocks: nn.Sequential = model.blocks  # type: ignore[assignment]
    store: list[torch.Tensor] = []
    handle = blocks[idx].register_forward_pre_hook(lambda _m, args: store.append(args[0]))
    try:
        f = model.features(x)
    finally:
        handle.remove()
    if len(store) != 1:
        raise RuntimeError(f"expected one capture at block {idx}, got {len(store)}")
    return f, store[0]


def _tail(model: nn.Module, h: torch.Tensor, idx: int | None,
          fused: FusedDlibResNet | None = None) -> torch.Tensor:
    """Embeddings from the (perturbed) tensor at the dropout point."""
    if fused is not None:
        f = h if idx is None else fused.blocks(h, idx).mean(dim=(2, 3))
        return fused.embed_from_features(f)
    if idx is not None:
        for block in list(model.blocks)[idx:]:  # type: ignore[union-attr]
            h = block(h)
        h = h.mean(dim=(2, 3))
    return model.embed_from_features(h)


def _dropout_mask(
    shape: tuple[int, ...], rate: float, kind: str, gen: torch.Generator
) -> torch.Tensor:
    """Inverted-dropout mask (kept entries scaled by 1/(1-rate)), drawn on CPU from ``gen``.

    ``channel`` drops whole feature maps (Dropout2d), ``element`` single activations.
    """
    if len(shape) == 4 and kind == "channel":
        shape = (shape[0], shape[1], 1, 1)  # broadcasts over H, W
    keep = torch.rand(shape, generator=gen) >= rate
    return keep.to(torch.float32) / (1.0 - rate)


def _spread_quality(emb: torch.Tensor) -> torch.Tensor:
    """(B, T, d) embeddings -> (B,) SER-FIQ quality from the mean pairwise distance.

    Squared distances come from the float64 Gram matrix of the normalised embeddings
    (O(T^2 d) as one batched matmul, so T = 1000 stays cheap). Values at float64 rounding
    level (<= 1e-12, i.e. distances below 1e-6) are set to 0, so T identical embeddings
    give exactly distance 0 and score 1.
    """
    e = F.normalize(emb.to(torch.float64), dim=-1)
    t = e.shape[1]
    d2 = (2.0 - 2.0 * torch.bmm(e, e.transpose(1, 2))).clamp_min(0.0)
    d2 = torch.where(d2 <= _D2_ROUNDING, torch.zeros_like(d2), d2)
    iu = torch.triu_indices(t, t, offset=1, device=e.device)
    mean_d = d2[:, iu[0], iu[1]].sqrt().mean(dim=1)
    return 2.0 / (1.0 + torch.exp(mean_d))


def serfiq_scores(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    *,
    T: int = 100,
    rate: float = DEFAULT_RATE,
    placement: Placement = DEFAULT_PLACEMENT,
    dropout: DropoutKind = DEFAULT_DROPOUT,
    seed: int = 0,
    batch_size: int = 64,
    common_masks: bool = True,
) -> np.ndarray:
    """SER-FIQ quality in (0, 1] per image (higher = more stable = better).

    ``images``: (N, 3, H, W) float in the backbone's input range ([0, 255] RGB for
    dlib_resnet). ``T`` stochastic passes with dropout probability ``rate`` at
    ``placement``; ``dropout`` (``channel`` or ``element``) only matters for feature-map
    placements, ``pooled`` always drops elements. Masks come from a CPU generator seeded
    with ``seed``, so the same call gives the same scores (also on GPU).

    ``common_masks=True`` (default) applies the same T masks to every image (common random
    numbers): a score then does not depend on the batch or the image's position, and
    differences between images are not Monte Carlo noise, which on dlib is as large as the
    between-image spread (docs/serfiq-dropout.md). ``False`` draws fresh masks per image
    as in the original SER-FIQ code.
    """
    if T < 2:
        raise ValueError(f"T must be >= 2 (pairwise distances), got {T}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    if dropout not in ("channel", "element"):
        raise ValueError(f"dropout must be 'channel' or 'element', got {dropout!r}")
    x_all = as_face_batch(images, batch_size)
    idx = _capture_index(model, placement)
    # dlib ResNet on CPU: the folded/fused copy (same function to float rounding, ~1.9x
    # faster). Its structure is known, so the per-batch split check is not needed.
    fused = fused_dlib(model)
    gen = torch.Generator().manual_seed(seed)
    common: torch.Tensor | None = None
    out = np.empty(x_all.shape[0], dtype=np.float64)
    for lo, x in eval_batches(model, x_all, batch_size):
        if fused is not None:
            h = fused.features(x) if idx is None else fused.blocks(fused.stem(x), 0, idx)
        else:
            feats, h = _trunk(model, x, idx)
            if idx is not None:
                _check_tail(model, h, feats, idx, placement)
        if common_masks and common is None and rate > 0:
            common = _dropout_mask((T, *h.shape[1:]), rate, dropout, gen)
        out[lo : lo + x.shape[0]] = _scores_at(model, h, idx, T, rate, dropout, gen, common,
                                               fused)
    return out


def _scores_at(
    model: nn.Module,
    h: torch.Tensor,
    idx: int | None,
    T: int,
    rate: float,
    dropout: str,
    gen: torch.Generator,
    common: torch.Tensor | None = None,
    fused: FusedDlibResNet | None = None,
) -> np.ndarray:
    """SER-FIQ scores for a batch given the tensor at the dropout point (no grad).

    ``common``: (T, *h.shape[1:]) masks applied to every image; None draws fresh masks
    per image from ``gen``.
    """
    per_tail = max(1, _TAIL_ROWS // T)
    out = np.empty(h.shape[0], dtype=np.float64)
    for j in range(0, h.shape[0], per_tail):
        hj = h[j : j + per_tail]
        rep = hj.repeat_interleave(T, dim=0)
        if rate > 0 and common is not None:
            rep = (rep.view(hj.shape[0], T, *hj.shape[1:]) * common.to(rep.device)).flatten(0, 1)
        elif rate > 0:
            rep = rep * _dropout_mask(tuple(rep.shape), rate, dropout, gen).to(rep.device)
        emb = _tail(model, rep, idx, fused).reshape(hj.shape[0], T, -1)
        out[j : j + hj.shape[0]] = _spread_quality(emb).cpu().numpy()
    return out


def _check_tail(
    model: nn.Module, h: torch.Tensor, feats: torch.Tensor, idx: int, placement: str
) -> None:
    """The dropout-free tail must reproduce ``features``; otherwise the split is wrong."""
    blocks = list(model.blocks)  # type: ignore[union-attr]
    g = h
    for block in blocks[idx:]:
        g = block(g)
    pooled = g.mean(dim=(2, 3))
    scale = float(feats.abs().max()) or 1.0
    err = float((pooled - feats).abs().max())
    if not math.isfinite(err) or err > _CHECK_RTOL * scale:
        raise RuntimeError(
            f"placement {placement!r}: running blocks[{idx}:] and a global mean does not "
            f"reproduce {type(model).__name__}.features (max error {err:.3g}); this backbone's "
            "structure is not supported for map placements, use placement='pooled'"
        )
