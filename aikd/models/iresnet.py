"""ArcFace "improved ResNet" (iresnet) backbones, state_dict-compatible with insightface.

The module and parameter names (``conv1``, ``bn1``, ``prelu``, ``layerN.i.{bn1,conv1,bn2,
prelu,conv2,bn3,downsample.0/1}``, ``bn2``, ``fc``, ``features``) are exactly those of
insightface's ``arcface_torch`` ``IResNet``, so a released ``backbone.pth`` loads with a
strict key check and no renaming. Only what inference and distillation need is kept:
no fp16 autocast switch, dilation or groups options.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: Blocks per stage, as in arcface_torch.
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}


class IBasicBlock(nn.Module):
    """Pre-activation block ``BN-conv3x3-BN-PReLU-conv3x3(stride)-BN`` plus shortcut.

    The stride sits on the second conv and the projection shortcut (1x1 conv + BN) is only
    present when the block changes resolution or width, mirroring arcface_torch.
    """

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """ArcFace iresnet: 112x112 RGB face -> 512-D embedding.

    ``forward`` takes float32 NCHW RGB in [0, 255] and maps it to [-1, 1] itself
    ((x / 255 - 0.5) / 0.5, arcface_torch's training normalisation). ``features`` returns
    the flattened 512x7x7 output of ``bn2`` (the input of the embedding layer) and
    ``embed_from_features`` applies dropout -> ``fc`` -> ``features`` (BatchNorm1d), so
    SER-FIQ can run the convolutional trunk once and the head many times.
    """

    embedding_dim: int = 512
    input_size: tuple[int, int] = (112, 112)
    template: str = "arcface112"
    fc_scale: int = 7 * 7

    def __init__(
        self, layers: tuple[int, int, int, int], num_features: int = 512, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.embedding_dim = num_features
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * self.fc_scale, num_features)
        # insightface keys the final BatchNorm1d as "features", but our contract needs a
        # `features()` method. The module is registered directly in `_modules` (add_module
        # refuses a name the class already uses): state_dict/load_state_dict/.to()/.eval()
        # see it as "features", while attribute access `self.features` is the method.
        # Use `embedding_bn` to reach the BatchNorm1d from Python.
        self._modules["features"] = nn.BatchNorm1d(num_features, eps=1e-5)
        nn.init.constant_(self.embedding_bn.weight, 1.0)
        self.embedding_bn.weight.requires_grad = False  # fixed scale, as in arcface_torch
        self._init_random()

    def _init_random(self) -> None:
        """Variance-preserving random init, so an untrained model gives O(1) embeddings.

        arcface_torch draws convs from N(0, 0.1), which only works in train mode: with the
        identity running statistics of a fresh model in eval mode, activations reach ~1e26
        in iresnet50. Here convs use fan-in scaling and each residual branch's last BN is
        scaled by 1/sqrt(#blocks), keeping activations O(1) at any depth. Loading a
        checkpoint overwrites all of it.
        """
        blocks = [m for m in self.modules() if isinstance(m, IBasicBlock)]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1.0)
                nn.init.constant_(m.bias, 0.0)
        for block in blocks:
            nn.init.constant_(block.bn3.weight, 1.0 / math.sqrt(len(blocks)))

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, 1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=1e-5),
        )
        layers = [IBasicBlock(self.inplanes, planes, stride=2, downsample=downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    @property
    def embedding_bn(self) -> nn.BatchNorm1d:
        """The final BatchNorm1d (state_dict key ``features``)."""
        bn = self._modules["features"]
        assert isinstance(bn, nn.BatchNorm1d)
        return bn

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """RGB [0, 255] batch (N, 3, 112, 112) -> (N, 512*7*7) flattened ``bn2`` output."""
        x = (x / 255.0 - 0.5) / 0.5
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.bn2(x), 1)

    def embed_from_features(self, f: torch.Tensor) -> torch.Tensor:
        """(N, 25088) trunk output -> (N, 512) embedding: dropout, ``fc``, BatchNorm1d."""
        return self.embedding_bn(self.fc(self.dropout(f)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_from_features(self.features(x))


def iresnet(name: str, dropout: float = 0.0) -> IResNet:
    """Randomly initialised ``iresnet50``/``iresnet100`` (load weights separately)."""
    if name not in IRESNET_LAYERS:
        raise ValueError(f"unknown iresnet {name!r}; available: {sorted(IRESNET_LAYERS)}")
    return IResNet(IRESNET_LAYERS[name], dropout=dropout)
