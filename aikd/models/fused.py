"""Folded, fused inference copy of the dlib ResNet: same function, fewer memory passes.

Every ``Affine2d`` (dlib's batch norm, frozen at export) is folded into the convolution
before it, the input normalisation ``(x - mean) / 256`` into the first (unpadded)
convolution, and each convolution runs as one oneDNN call with its ReLU (and the residual
add) fused, so a block is two calls instead of ~7 passes over its activations. In float32
this matches :class:`~aikd.models.dlib_resnet.DlibResNet` to float rounding (folding
reorders the arithmetic; tests/test_fused.py bounds the difference on real faces).

Used wherever the network runs with weights that do not change during the call: the
embed stage, SER-FIQ's trunk and its T dropout tails, the quality stage's shared trunk and
student tails, and (as :class:`aikd.distill.fast.FrozenPrefix`) the frozen prefix of a
training student. The folded tensors are plain attributes, never parameters: a copy is
valid only for the weights it was built from (:func:`fused_dlib` rebuilds when they change).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from aikd.models.dlib_resnet import Affine2d, DlibResNet, add_zero_extended

#: oneDNN convolution with a fused add/ReLU (what torch.compile's CPU backend emits).
#: Absent (other builds) or off CPU: plain conv2d + relu.
_FUSED = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)


def fold(conv: nn.Conv2d, affine: Affine2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``affine(conv(x))`` as one convolution, in float64 then float32."""
    s = affine.weight.detach().double()
    w = conv.weight.detach().double() * s.view(-1, 1, 1, 1)
    assert conv.bias is not None
    b = conv.bias.detach().double() * s + affine.bias.detach().double()
    return w.float(), b.float()


class FoldedConv:
    """One folded convolution: weight, bias, stride, padding (no autograd, no module)."""

    def __init__(self, conv: nn.Conv2d, affine: Affine2d, dtype: torch.dtype,
                 channels_last: bool) -> None:
        w, b = fold(conv, affine)
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


def extend(t: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``t`` zero-padded to (C, H, W) = ``size`` (trailing channels, bottom rows, right
    columns), as dlib's ``add_prev`` treats the smaller tensor."""
    c, h, w = size
    pads = (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1])
    return F.pad(t, pads) if any(pads) else t


class FusedDlibResNet:
    """The stem + ``blocks[:n_blocks]`` (default: all) of a dlib ResNet, folded.

    ``stem(x)`` / ``blocks(h, lo, hi)`` mirror the module's stem and ``blocks[lo:hi]``;
    ``features`` and ``__call__`` (the 128-D descriptor) need every block folded. Input:
    float NCHW RGB in [0, 255]; the result is in ``dtype`` (keep float32 wherever the
    output feeds verification).
    """

    embedding_dim: int = DlibResNet.embedding_dim
    template: str = DlibResNet.template
    input_size: tuple[int, int] = DlibResNet.input_size

    def __init__(self, backbone: DlibResNet, n_blocks: int | None = None,
                 dtype: torch.dtype = torch.float32, channels_last: bool = True) -> None:
        if not isinstance(backbone, DlibResNet):
            raise TypeError(f"FusedDlibResNet needs a DlibResNet, got {type(backbone).__name__}")
        if backbone.conv1.padding != (0, 0):
            raise ValueError("the input normalisation folds into conv1 only when conv1 is "
                             "unpadded")
        n_all = len(backbone.blocks)
        self.n_blocks = n_all if n_blocks is None else n_blocks
        self.dtype, self.channels_last = dtype, channels_last
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        conv1 = FoldedConv(backbone.conv1, backbone.aff1, torch.float32, channels_last)
        # conv1((x - m) / 256) = conv1'(x): W' = W / 256, b' = b - sum(W' * m); exact
        # because conv1 has no padding (every tap sees a pixel, never a zero).
        mean = backbone.rgb_mean.detach().double().view(1, 3, 1, 1)
        w = conv1.weight.double() / 256.0
        conv1.bias = (conv1.bias.double() - (w * mean).sum(dim=(1, 2, 3))).float().to(dtype)
        conv1.weight = w.float().to(dtype).contiguous(memory_format=self.fmt)
        self.conv1 = conv1
        self.layers: list[tuple[FoldedConv, FoldedConv, bool]] = []
        for block in list(backbone.blocks)[: self.n_blocks]:
            body = block.body
            self.layers.append((FoldedConv(body.conv1, body.aff1, dtype, channels_last),
                                FoldedConv(body.conv2, body.aff2, dtype, channels_last),
                                bool(block.down)))
        self.fc = backbone.fc.weight.detach().to(dtype) if self.n_blocks == n_all else None

    @torch.no_grad()
    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """RGB [0, 255] -> the input of ``blocks[0]`` (normalise, conv, affine, relu, pool)."""
        x = x.to(self.dtype).contiguous(memory_format=self.fmt)
        return F.max_pool2d(self.conv1(x), 3, 2)

    @torch.no_grad()
    def blocks(self, h: torch.Tensor, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """``backbone.blocks[lo:hi](h)`` with the folded weights."""
        h = h.to(self.dtype).contiguous(memory_format=self.fmt)
        for conv_a, conv_b, down in self.layers[lo:hi]:
            shortcut = F.avg_pool2d(h, 2, 2) if down else h
            a = conv_a(h)
            size = (conv_b.weight.shape[0], a.shape[2], a.shape[3])  # conv_b keeps H, W
            if all(s <= t for s, t in zip(shortcut.shape[1:], size, strict=True)):
                # dlib's zero-extending add, as the fused conv's residual input
                h = conv_b(a, residual=extend(shortcut, size).contiguous(memory_format=self.fmt))
            else:
                h = F.relu(add_zero_extended(conv_b.linear(a), shortcut))
        return h

    def _whole(self) -> torch.Tensor:
        if self.fc is None:
            raise ValueError(f"only {self.n_blocks} blocks are folded: no features/embedding")
        return self.fc

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 256) globally pooled trunk output, as ``DlibResNet.features``."""
        self._whole()
        return self.blocks(self.stem(x)).mean(dim=(2, 3))

    def embed_from_features(self, f: torch.Tensor) -> torch.Tensor:
        """(N, 256) -> (N, 128) descriptor (dlib's ``fc_no_bias<128>``)."""
        return F.linear(f.to(self.dtype), self._whole())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 128) descriptor, as ``DlibResNet.forward``."""
        return self.embed_from_features(self.features(x))

    def eval(self) -> FusedDlibResNet:
        """No-op (always inference), so code that calls ``model.eval()`` accepts it."""
        return self


def _weights_key(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """Identity and in-place version of every tensor: changes when any weight is updated."""
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, FusedDlibResNet]] = (
    weakref.WeakKeyDictionary())


def fused_dlib(model: nn.Module) -> FusedDlibResNet | None:
    """A float32 :class:`FusedDlibResNet` of ``model`` for inference on CPU, or None when
    it does not apply (another architecture, or a model off the CPU). No autograd: call it
    only where the weights are frozen. Cached per model and rebuilt when any weight
    changes, so per-batch callers (SER-FIQ) fold once."""
    if not isinstance(model, DlibResNet) or model.fc.weight.device.type != "cpu":
        return None
    key = _weights_key(model)
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    fused = FusedDlibResNet(model)
    _CACHE[model] = (key, fused)
    return fused


__all__ = ["FoldedConv", "FusedDlibResNet", "extend", "fold", "fused_dlib"]
