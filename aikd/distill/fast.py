"""Faster student steps on CPU with the same function: a folded frozen prefix, bf16 affines.

Profiling the default step (benchmarks/train_step.py, ``profile``) showed where the
time goes: the student's frozen input-side stages (stem and the 35/17-px blocks, no
gradient needed) and the fp32 convolutions. Two changes keep the network's function
and the loss as they were:

* :class:`FrozenPrefix`: the frozen stem and leading blocks of a dlib ResNet run as an
  inference-only copy in which every ``Affine2d`` (batch norm folded at export) is folded
  into the convolution before it, and the input normalisation ``(x - mean) / 256`` into
  the first (unpadded) convolution; in bf16 its convolutions use oneDNN's AMX kernels.
  Its tensors are plain attributes, not parameters or buffers, so the state dict,
  checkpoints, DDP and SWA see exactly the student they saw before.
* :func:`follow_input_dtype`: under bf16 autocast, ``Affine2d`` multiplies a bf16 activation
  by fp32 weights and so promotes every activation back to fp32, which the next
  convolution casts down again (16 % of a bf16 step was such copies). The swapped class
  computes the same affine in the activation's dtype; parameters stay fp32 (autocast's
  master weights), so the optimizer and the saved model are unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch import nn

from aikd.models.dlib_resnet import Affine2d, DlibResNet
from aikd.models.fused import FusedDlibResNet

log = logging.getLogger(__name__)

class DtypeAffine2d(Affine2d):
    """``Affine2d`` computed in the input's dtype (same parameters, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype).view(1, -1, 1, 1)
        return x * w + self.bias.to(x.dtype).view(1, -1, 1, 1)


def follow_input_dtype(module: nn.Module) -> nn.Module:
    """Swap every ``Affine2d`` of ``module`` for :class:`DtypeAffine2d`, in place.

    A no-op in fp32 (``.to(float32)`` of an fp32 tensor is the tensor itself).
    """
    for m in module.modules():
        if type(m) is Affine2d:
            m.__class__ = DtypeAffine2d
    return module


class FrozenPrefix(FusedDlibResNet):
    """The frozen stem + ``blocks[:n_blocks]`` of a dlib ResNet, folded for inference.

    ``features(x)`` is the input of ``blocks[n_blocks]`` for float NCHW RGB in [0, 255],
    in ``dtype``; with float32 it matches the module's own forward to float rounding
    (tests/test_distill_fast.py bounds the difference). The folding itself is
    :class:`aikd.models.fused.FusedDlibResNet`'s; this adds the frozen-weights check.
    Built once from the weights at hand: valid only while they stay frozen.
    """

    def __init__(self, backbone: DlibResNet, n_blocks: int, dtype: torch.dtype,
                 channels_last: bool = True) -> None:
        if any(p.requires_grad for p in _prefix_params(backbone, n_blocks)):
            raise ValueError("FrozenPrefix: the stem and the folded blocks must be frozen")
        super().__init__(backbone, n_blocks, dtype, channels_last)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """The input of ``blocks[n_blocks]`` (a feature map, not the pooled features)."""
        return self.blocks(self.stem(x))

    def embed(self, backbone: DlibResNet, x: torch.Tensor) -> torch.Tensor:
        """``backbone(x)`` with the frozen prefix computed here (the rest by ``backbone``)."""
        h = self.features(x)
        for block in list(backbone.blocks)[self.n_blocks:]:
            h = block(h)
        return backbone.embed_from_features(h.mean(dim=(2, 3)))


def _prefix_params(backbone: DlibResNet, n_blocks: int) -> Iterator[nn.Parameter]:
    yield from backbone.conv1.parameters()
    yield from backbone.aff1.parameters()
    for block in list(backbone.blocks)[:n_blocks]:
        yield from block.parameters()


def frozen_blocks(backbone: nn.Module) -> int:
    """How many leading blocks of a dlib ResNet (after a frozen stem) have no trainable
    parameter; 0 when the stem trains, or for another architecture."""
    if not isinstance(backbone, DlibResNet):
        return 0
    stem = [*backbone.conv1.parameters(), *backbone.aff1.parameters()]
    if any(p.requires_grad for p in stem):
        return 0
    n = 0
    for block in backbone.blocks:
        if any(p.requires_grad for p in block.parameters()):
            break
        n += 1
    return n


def fold_frozen_prefix(student: nn.Module, dtype: torch.dtype, channels_last: bool) -> int:
    """Give ``student`` (an ``AIKDStudent``) a :class:`FrozenPrefix` of its frozen blocks;
    returns how many blocks it covers (0: nothing to fold, the student is unchanged)."""
    n = frozen_blocks(student.backbone)
    if n == 0:
        log.info("fuse_frozen: no frozen dlib ResNet prefix to fold (trainable=all or "
                 "another backbone); the student runs unchanged")
        student.prefix = None
        return 0
    student.prefix = FrozenPrefix(student.backbone, n, dtype, channels_last)
    return n
