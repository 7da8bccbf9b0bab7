"""The AI-KD objective: w * (1 - cos(e, ê)) + (1 - w) * L_q(q, q̂).

The consistency term pulls the student's embedding of the misaligned face x̂ towards the
teacher's embedding of the properly aligned face x, so the quality the head reads off the
embedding stops depending on how the face was cropped. L_q is L1 (the paper) or smooth L1
with beta 0.5 (the official code); on targets in [0, 1] smooth L1 with beta 0.5 is
squared error for every residual below 0.5, i.e. nearly always.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from aikd.distill.model import cosine


class LossTerms(NamedTuple):
    total: torch.Tensor
    consistency: torch.Tensor  # mean 1 - cos(e, ê); NaN when no teacher embedding was given
    quality: torch.Tensor  # mean L_q


class AIKDLoss(nn.Module):
    """Weighted sum of the feature-consistency and quality-regression terms."""

    def __init__(self, w: float = 0.5, quality_loss: str = "l1", beta: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"w must be in [0, 1], got {w}")
        if quality_loss not in ("l1", "smooth_l1"):
            raise ValueError(f"quality_loss must be 'l1' or 'smooth_l1', got {quality_loss!r}")
        self.w = float(w)
        self.quality_loss = quality_loss
        self.beta = float(beta)

    def quality_term(self, q_hat: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        q_hat, q = q_hat.float(), q.float()
        if self.quality_loss == "l1":
            return F.l1_loss(q_hat, q)
        return F.smooth_l1_loss(q_hat, q, beta=self.beta)

    def forward(
        self,
        e_hat: torch.Tensor,
        q_hat: torch.Tensor,
        q: torch.Tensor,
        e: torch.Tensor | None,
    ) -> LossTerms:
        lq = self.quality_term(q_hat, q)
        if e is None:
            if self.w > 0:
                raise ValueError("w > 0 needs the teacher embedding e")
            return LossTerms(lq, torch.full_like(lq, float("nan")), lq)
        cons = (1.0 - cosine(e, e_hat)).mean()
        if self.w == 0:  # baseline B: report the term, train on L_q only
            return LossTerms(lq, cons.detach(), lq)
        return LossTerms(self.w * cons + (1.0 - self.w) * lq, cons, lq)
