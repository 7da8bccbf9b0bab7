"""PyTorch port of dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1``).

The weights come straight from dlib's binary ``.dat`` file through the parser in
:mod:`aikd.models.dlib_dat`, so neither dlib nor a conversion step is needed at load time.

The forward pass reproduces dlib's arithmetic, including its two non-PyTorch conventions:
a stride-2 convolution uses no padding, and ``add_prev`` adds tensors of different shapes by
treating missing entries (extra channels, bottom rows, right columns) as zero.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from aikd.models.dlib_dat import (
    DLIB_LEVELS,
    DLIB_RGB_MEAN,
    DlibModelFormatError,
    DlibNet,
    default_dlib_model_path,
    read_dlib_model,
)


class Affine2d(nn.Module):
    """Per-channel ``x * weight + bias``: dlib's ``affine_`` layer (batch norm frozen at export).

    ``weight``/``bias`` are ``nn.Parameter`` with ``requires_grad=False``: inference treats
    them as constants, exactly like dlib, while a distillation stage that wants to adapt the
    teacher/student can opt in with ``requires_grad_(True)`` and they already appear in
    ``parameters()`` and ``state_dict()``. Broadcasting (no per-channel loop) keeps the
    layer ``torch.compile`` and channels-last friendly.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(channels), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def _dlib_conv(c_in: int, c_out: int, k: int, stride: int) -> nn.Conv2d:
    # dlib's con<> default: no padding when strided, "same" padding (k/2) otherwise.
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=0 if stride != 1 else k // 2)


def add_zero_extended(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: sum of two tensors of possibly different C/H/W.

    The result has the larger size on every axis; entries missing from the smaller tensor
    (trailing channels, bottom rows, right columns) count as zero. In this network that
    zero-fills the extra channels of the pooled shortcut and pads the strided branch of the
    last down blocks (3x3 vs 4x4, 1x1 vs 2x2) at the bottom/right.
    """
    c = max(a.shape[1], b.shape[1])
    h = max(a.shape[2], b.shape[2])
    w = max(a.shape[3], b.shape[3])

    def extend(t: torch.Tensor) -> torch.Tensor:
        pads = (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1])
        return F.pad(t, pads) if any(pads) else t

    return extend(a) + extend(b)


class DlibBlock(nn.Module):
    """``affine(conv3x3(relu(affine(conv3x3(x)))))``; the first conv carries the stride."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _dlib_conv(c_in, c_out, 3, stride)
        self.aff1 = Affine2d(c_out)
        self.conv2 = _dlib_conv(c_out, c_out, 3, 1)
        self.aff2 = Affine2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))


class DlibResidual(nn.Module):
    """``relu(block(x) + x)``, or for a down block ``relu(block(x) (+) avgpool2x2(x))``.

    ``(+)`` is dlib's zero-extending add: the shortcut has no projection, its missing
    channels are zeros, and spatial sizes that differ are reconciled at the bottom/right.
    """

    def __init__(self, c_in: int, c_out: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.body = DlibBlock(c_in, c_out, 2 if down else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            return F.relu(add_zero_extended(self.body(x), F.avg_pool2d(x, 2, 2)))
        return F.relu(self.body(x) + x)


class DlibResNet(nn.Module):
    """dlib's 29-conv face ResNet: 150x150 RGB chip -> 128-D descriptor.

    ``forward`` takes float32 NCHW RGB in [0, 255] and normalises it itself, like dlib's
    ``input_rgb_image_sized`` layer ((x - mean) / 256). ``features`` stops at the 256-D
    globally pooled representation and ``embed_from_features`` applies the final linear
    layer, so SER-FIQ can run the trunk once and the last layer many times. Constructed
    directly, the weights are random; use :func:`aikd.models.load_backbone` or
    :meth:`from_dlib_file` for dlib's trained ones. On CPU, converting model and input to
    ``torch.channels_last`` is ~1.5x faster (see benchmarks/embed_backbone.py).
    """

    embedding_dim: int = 128
    input_size: tuple[int, int] = (150, 150)
    template: str = "dlib150"

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer(
            "rgb_mean", torch.tensor(DLIB_RGB_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        )
        self.conv1 = _dlib_conv(3, 32, 7, 2)
        self.aff1 = Affine2d(32)
        blocks: list[nn.Module] = []
        c_prev = 32
        for channels, n_plain, down in DLIB_LEVELS:
            if down:
                blocks.append(DlibResidual(c_prev, channels, down=True))
            blocks += [DlibResidual(channels, channels, down=False) for _ in range(n_plain)]
            c_prev = channels
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(256, 128, bias=False)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """RGB [0, 255] batch -> the input of ``blocks`` (normalise, conv, affine, pool)."""
        x = (x - self.rgb_mean) / 256.0
        x = F.relu(self.aff1(self.conv1(x)))
        return F.max_pool2d(x, 3, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """RGB [0, 255] batch -> (N, 256) globally averaged trunk output (input to ``fc``)."""
        return self.blocks(self.stem(x)).mean(dim=(2, 3))

    def embed_from_features(self, f: torch.Tensor) -> torch.Tensor:
        """(N, 256) features -> (N, 128) descriptor (dlib's ``fc_no_bias<128>``)."""
        return self.fc(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_from_features(self.features(x))

    @torch.no_grad()
    def load_dlib_net(self, net: DlibNet) -> DlibResNet:
        """Copy parsed dlib records into this module (convs/affines in forward order)."""
        convs = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
        affines = [m for m in self.modules() if isinstance(m, Affine2d)]
        if len(convs) != len(net.convs) or len(affines) != len(net.affines) or len(net.fcs) != 1:
            raise DlibModelFormatError(f"layer counts {net.counts()} do not match this network")
        for i, (mod, rec) in enumerate(zip(convs, net.convs, strict=True)):
            if (
                tuple(mod.weight.shape) != rec.weight.shape
                or mod.stride != rec.stride
                or mod.padding != rec.padding
            ):
                raise DlibModelFormatError(
                    f"conv {i}: file has {rec.weight.shape} stride {rec.stride} "
                    f"padding {rec.padding}, module expects {tuple(mod.weight.shape)} "
                    f"stride {mod.stride} padding {mod.padding}"
                )
            mod.weight.copy_(torch.from_numpy(rec.weight))
            assert mod.bias is not None
            mod.bias.copy_(torch.from_numpy(rec.bias))
        for i, (mod, rec) in enumerate(zip(affines, net.affines, strict=True)):
            if mod.weight.shape[0] != rec.gamma.size:
                raise DlibModelFormatError(
                    f"affine {i}: file has {rec.gamma.size} channels, module {mod.weight.shape[0]}"
                )
            mod.weight.copy_(torch.from_numpy(rec.gamma))
            mod.bias.copy_(torch.from_numpy(rec.beta))
        fc = net.fcs[0].weight
        if fc.shape != (self.fc.in_features, self.fc.out_features):
            raise DlibModelFormatError(f"fc weight {fc.shape} does not match (256, 128)")
        self.fc.weight.copy_(torch.from_numpy(fc.T.copy()))
        self.rgb_mean.copy_(torch.tensor(net.rgb_mean, dtype=torch.float32).view(1, 3, 1, 1))
        return self

    @classmethod
    def from_dlib_file(cls, path: str | Path | None = None) -> DlibResNet:
        """Build the network with dlib's trained weights (default: the installed model file)."""
        net = read_dlib_model(path if path is not None else default_dlib_model_path())
        return cls().load_dlib_net(net).eval()
