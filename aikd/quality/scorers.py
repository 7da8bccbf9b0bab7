"""Quality scorers: functions of one aligned batch that fill one or more quality columns.

The quality stage hands every scorer the same aligned crops; a scorer that runs several
models (the distilled students and the FR model's flip consistency) shares the blocks
they have in common with the pretrained network, so each extra model costs only its tail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np
import torch

from aikd.models.fused import fused_dlib

log = logging.getLogger("aikd")

#: A scorer maps a batch (float NCHW RGB in [0, 255], aligned) to one quality per face
#: for each name in its ``columns`` (one scorer may fill several, sharing work).
Scorer = Callable[[torch.Tensor], Mapping[str, np.ndarray]]


class ColumnScorer:
    """One quality function as a one-column scorer."""

    def __init__(self, name: str, fn: Callable[[torch.Tensor], np.ndarray]) -> None:
        self.columns = [name]
        self.fn = fn

    def __call__(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        return {self.columns[0]: np.asarray(self.fn(x), dtype=np.float64)}


def _same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def shared_blocks(reference: torch.nn.Module, other: torch.nn.Module) -> int:
    """How many leading residual blocks of two dlib ResNets are bit-identical (-1: even
    the stem differs). Students train only their last stages, so their first blocks are
    still the pretrained ones and need to run once per image, not once per model."""
    from aikd.models.dlib_resnet import DlibResNet

    if not (isinstance(reference, DlibResNet) and isinstance(other, DlibResNet)):
        return -1
    if not (_same_tensors(reference.conv1, other.conv1) and _same_tensors(reference.aff1,
                                                                          other.aff1)
            and torch.equal(reference.rgb_mean, other.rgb_mean)):
        return -1
    k = 0
    for ra, ob in zip(reference.blocks, other.blocks, strict=True):
        if not _same_tensors(ra, ob):
            break
        k += 1
    return k


class SharedTrunkScorer:
    """Several quality models (and the FR model's own flip consistency) on one batch,
    running the blocks they share with the pretrained network once.

    Every column equals what the model computes on its own (tested); on the dlib net with
    the last three stages trained this halves the cost of each extra model.
    """

    def __init__(self, reference: torch.nn.Module, models: Mapping[str, torch.nn.Module],
                 *, flip: bool = False) -> None:
        self.reference = reference
        self.models = dict(models)
        self.flip = flip
        ks = [shared_blocks(reference, m.backbone) for m in self.models.values()]
        self.k = min(ks) if ks else -1
        if self.k < 0:
            log.info("quality models share no trunk with the FR model: full forward each")

    @property
    def columns(self) -> list[str]:
        return [*self.models, *(["flip"] if self.flip else [])]

    def _prefix(self, x: torch.Tensor) -> torch.Tensor:
        fused = fused_dlib(self.reference)
        if fused is not None:
            return fused.blocks(fused.stem(x), 0, self.k)
        return self.reference.blocks[: self.k](self.reference.stem(x))

    @staticmethod
    def _tail(backbone: torch.nn.Module, h: torch.Tensor, k: int) -> torch.Tensor:
        """``blocks[k:]``, pooling and ``fc`` of ``backbone``; folded and fused on CPU
        (frozen weights at scoring time; the same function to float rounding)."""
        fused = fused_dlib(backbone)
        if fused is not None:
            return fused.embed_from_features(fused.blocks(h, k).mean(dim=(2, 3)))
        return backbone.embed_from_features(backbone.blocks[k:](h).mean(dim=(2, 3)))

    def __call__(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if self.k < 0:
            for name, m in self.models.items():
                out[name] = m(x).float().numpy()
            if self.flip:
                from aikd.fiqa.baselines import flip_consistency

                out["flip"] = flip_consistency(self.reference, x)
            return out
        h = self._prefix(x)
        for name, m in self.models.items():
            t = m.head(self._tail(m.backbone, h, self.k)).squeeze(-1)
            out[name] = m.to_label_scale(t.float()).numpy()
        if self.flip:
            e = self._tail(self.reference, h, self.k)
            ef = (fused_dlib(self.reference) or self.reference)(x.flip(-1))
            out["flip"] = torch.nn.functional.cosine_similarity(
                e.double(), ef.double(), dim=1).numpy()
        return out


__all__ = ["ColumnScorer", "Scorer", "SharedTrunkScorer", "shared_blocks"]
