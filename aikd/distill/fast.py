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
import torch.nn.functional as F
from torch import nn

from aikd.models.dlib_resnet import Affine2d, DlibResNet, add_zero_extended

log = logging.getLogger(__name__)

#: oneDNN convolution with a fused add/ReLU (what torch.compile's CPU backend emits);
#: ~20 % faster than the separate ops in bf16. Absent: plain conv2d + relu.
_FUSED = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)


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


def _fold(conv: nn.Conv2d, affine: Affine2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``affine(conv(x))`` as one convolution, in float64 then float32."""
    s = affine.weight.detach().double()
    w = conv.weight.detach().double() * s.view(-1, 1, 1, 1)
    assert conv.bias is not None
    b = conv.bias.detach().double() * s + affine.bias.detach().double()
    return w.float(), b.float()


class _Conv:
    """One folded convolution: weight, bias, stride, padding (no autograd, no module)."""

    def __init__(self, conv: nn.Conv2d, affine: Affine2d, dtype: torch.dtype,
                 channels_last: bool) -> None:
        w, b = _fold(conv, affine)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = w.to(dtype).contiguous(memory_format=fmt)
        self.bias = b.to(dtype)
        self.stride, self.padding = conv.stride, conv.padding

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``relu(conv(x) [+ residual])``, one oneDNN call with the add/relu fused on CPU."""
        if _FUSED and x.device.type == "cpu":
            args = (list(self.padding), list(self.stride), [1, 1], 1)
            if residual is None:
                return _FUSED(x, self.weight, self.bias, *args, "relu", [], "")
            return _FUSED.binary(x, residual, self.weight, self.bias, *args, "add", 1.0,
                                 "relu", [], "")
        y = self.linear(x)
        return F.relu(y if residual is None else y + residual)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


def _extend(t: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``t`` zero-padded to (C, H, W) = ``size`` (trailing channels, bottom rows, right
    columns), as dlib's ``add_prev`` treats the smaller tensor."""
    c, h, w = size
    pads = (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1])
    return F.pad(t, pads) if any(pads) else t


class FrozenPrefix:
    """The frozen stem + ``blocks[:n_blocks]`` of a dlib ResNet, folded for inference.

    ``features(x)`` is the input of ``blocks[n_blocks]`` for float NCHW RGB in [0, 255],
    in ``dtype``; with float32 it matches the module's own forward to float rounding
    (folding reorders the arithmetic; tests/test_distill_fast.py bounds the difference).
    Built once from the weights at hand: valid only while they stay frozen.
    """

    def __init__(self, backbone: DlibResNet, n_blocks: int, dtype: torch.dtype,
                 channels_last: bool = True) -> None:
        if any(p.requires_grad for p in _prefix_params(backbone, n_blocks)):
            raise ValueError("FrozenPrefix: the stem and the folded blocks must be frozen")
        if backbone.conv1.padding != (0, 0):
            raise ValueError("FrozenPrefix: the input normalisation folds into conv1 only "
                             "when conv1 is unpadded")
        self.dtype, self.n_blocks, self.channels_last = dtype, n_blocks, channels_last
        conv1 = _Conv(backbone.conv1, backbone.aff1, torch.float32, channels_last)
        # conv1((x - m) / 256) = conv1'(x): W' = W / 256, b' = b - sum(W' * m); exact
        # because conv1 has no padding (every tap sees a pixel, never a zero).
        mean = backbone.rgb_mean.detach().double().view(1, 3, 1, 1)
        w = conv1.weight.double() / 256.0
        conv1.bias = (conv1.bias.double() - (w * mean).sum(dim=(1, 2, 3))).float().to(dtype)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        conv1.weight = w.float().to(dtype).contiguous(memory_format=fmt)
        self.conv1 = conv1
        self.blocks: list[tuple[_Conv, _Conv, bool]] = []
        for block in list(backbone.blocks)[:n_blocks]:
            body = block.body
            self.blocks.append((_Conv(body.conv1, body.aff1, dtype, channels_last),
                                _Conv(body.conv2, body.aff2, dtype, channels_last),
                                bool(block.down)))

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        x = F.max_pool2d(self.conv1(x), 3, 2)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        for conv_a, conv_b, down in self.blocks:
            shortcut = F.avg_pool2d(x, 2, 2) if down else x
            h = conv_a(x)
            size = (conv_b.weight.shape[0], h.shape[2], h.shape[3])  # conv_b keeps H, W
            if all(a <= b for a, b in zip(shortcut.shape[1:], size, strict=True)):
                # dlib's zero-extending add, as the fused conv's residual input
                x = conv_b(h, residual=_extend(shortcut, size).contiguous(memory_format=fmt))
            else:
                x = F.relu(add_zero_extended(conv_b.linear(h), shortcut))
        return x

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
