"""Teacher, student and the saved quality model of AI-KD.

* :class:`FrozenTeacher`: the pretrained FR backbone, frozen and in eval mode for good;
  its ``train()`` is a no-op so no parent ``.train()`` can switch BatchNorm to batch
  statistics or let dropout in.
* :class:`AIKDStudent`: a second copy of the same backbone plus :class:`QualityHead`
  (Linear(d, 2d) -> GELU -> Linear(2d, 1)) on the un-normalised embedding; returns both
  the embedding (for the consistency term) and the raw quality.
* :class:`QualityModel`: what inference uses: images -> quality in the label scale (or in
  the normalised [0, 1] target scale), loaded from the ``model.pt`` written by training.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from aikd.distill.data import LabelNorm, landmarks_for
from aikd.faces import iter_faces, to_float_input
from aikd.models.dlib_resnet import DlibResNet
from aikd.models.iresnet import IRESNET_LAYERS, IResNet, iresnet
from aikd.models.registry import available_backbones, load_backbone

MODEL_FORMAT = "aikd-quality-model/1"


class QualityHead(nn.Sequential):
    """Linear(d, 2d) -> GELU -> Linear(2d, 1): the AI-KD regression head.

    ``unit_input``: read the L2-normalised embedding. The FR network is used through cosine
    similarity and the SDD-FIQA / CR-FIQA labels are functions of it, so the embedding's
    norm is a nuisance (on validation people a ridge probe reaches rho 0.71 on the unit
    embedding of SDD-FIQA, 0.57 on the raw one; docs/recipe.md).
    """

    def __init__(self, dim: int, unit_input: bool = False) -> None:
        super().__init__(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, 1))
        self.unit_input = bool(unit_input)

    def features(self, emb: torch.Tensor) -> torch.Tensor:
        """What the first Linear reads: the embedding, L2-normalised if ``unit_input``."""
        return nn.functional.normalize(emb, dim=-1, eps=1e-8) if self.unit_input else emb

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return super().forward(self.features(emb))


# --------------------------------------------------------------------------- trainable tensors


def backbone_stages(backbone: nn.Module) -> list[list[str]]:
    """Parameter names of the backbone grouped into stages, input side first.

    A stage is one resolution level; the embedding layer belongs to the last one, so
    ``last_n_stages:1`` always includes it. dlib ResNet: stem (conv1 at 72x72), levels at
    35, 17, 8, 4 and 2 px (blocks 0-2, 3-6, 7-9, 10-12, 13) -> 6 stages. iResNet: stem,
    layer1..layer4 (+ bn2, fc, features) -> 5 stages.
    """
    names = [n for n, _ in backbone.named_parameters()]
    if isinstance(backbone, DlibResNet):
        bounds = [0, 3, 7, 10, 13, 14]  # first block index of each level, then the end

        def stage(name: str) -> int:
            m = re.match(r"blocks\.(\d+)\.", name)
            if m:
                block = int(m.group(1))
                return 1 + max(i for i in range(5) if bounds[i] <= block)
            return 5 if name.startswith("fc.") else 0

        n_stages = 6
    elif isinstance(backbone, IResNet):

        def stage(name: str) -> int:
            m = re.match(r"layer(\d)\.", name)
            if m:
                return int(m.group(1))
            return 0 if name.split(".")[0] in ("conv1", "bn1", "prelu") else 4

        n_stages = 5
    else:
        raise ValueError(f"no stage layout for {type(backbone).__name__}; use last_n_tensors:N")
    groups: list[list[str]] = [[] for _ in range(n_stages)]
    for n in names:
        groups[stage(n)].append(n)
    return groups


def select_trainable(backbone: nn.Module, spec: str) -> list[str]:
    """Names of the backbone parameters that ``spec`` trains.

    Only tensors the backbone itself leaves trainable are candidates: dlib's ``Affine2d``
    (batch norm folded at export) and iResNet's fixed embedding-BN scale stay frozen. An
    affine that follows a conv with bias adds nothing the conv cannot express, so this
    loses no capacity. ``last_n_tensors:N`` counts candidates from the output backwards,
    like the official code's ``list(params)[-N:]``.
    """
    candidates = [n for n, p in backbone.named_parameters() if p.requires_grad]
    if spec == "head":
        return []
    if spec == "all":
        return candidates
    kind, _, count = spec.partition(":")
    n = int(count)
    if kind == "last_n_tensors":
        return candidates[len(candidates) - n :] if n > 0 else []
    if kind == "last_n_stages":
        stages = backbone_stages(backbone)
        if n > len(stages):
            raise ValueError(f"{spec}: the backbone has only {len(stages)} stages")
        chosen = {name for group in stages[len(stages) - n :] for name in group} if n else set()
        return [c for c in candidates if c in chosen]
    raise ValueError(f"unknown trainable spec {spec!r}")


# --------------------------------------------------------------------------- modules


class FrozenTeacher(nn.Module):
    """The teacher Mᵗ: frozen, eval mode whatever ``train()`` is called with."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        # A parent module's .train() must never flip BatchNorm/dropout of the teacher.
        self.backbone.eval()
        self.training = False
        return self

    @property
    def embedding_dim(self) -> int:
        return int(self.backbone.embedding_dim)

    @property
    def template(self) -> str:
        return str(self.backbone.template)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


class AIKDStudent(nn.Module):
    """Student: backbone copy + quality head; ``forward`` -> (embedding, raw quality).

    ``prefix`` (``aikd.distill.fast.FrozenPrefix``, set by training) computes the frozen
    input-side blocks faster; it is a plain attribute, outside the state dict.
    """

    prefix: Any = None

    def __init__(self, backbone: nn.Module, trainable: str = "all",
                 unit_input: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = QualityHead(int(backbone.embedding_dim), unit_input)
        self.trainable_names = select_trainable(backbone, trainable)
        chosen = set(self.trainable_names)
        for name, p in backbone.named_parameters():
            p.requires_grad_(name in chosen)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.backbone(x) if self.prefix is None else self.prefix.embed(self.backbone, x)
        # The head in float32 under any autocast: its output is the regressed quality,
        # which bf16 would round to 2-3 digits (and the head costs nothing).
        with torch.autocast(emb.device.type, enabled=False):
            return emb, self.head(emb.float()).squeeze(-1)

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(head params, trainable backbone params): they get different momentum/decay."""
        bb = [p for p in self.backbone.parameters() if p.requires_grad]
        return list(self.head.parameters()), bb


def build_models(
    backbone: str, weights: str | Path | None, trainable: str, seed: int,
    unit_input: bool = False,
) -> tuple[FrozenTeacher, AIKDStudent]:
    """Teacher and student from one pretrained backbone (two independent copies)."""
    base = load_backbone(backbone, weights)
    teacher = FrozenTeacher(copy.deepcopy(base))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the head's init depends on the config seed only
        student = AIKDStudent(base, trainable, unit_input)
    return teacher, student


def to_channels_last(module: nn.Module) -> nn.Module:
    """Channels-last conv weights (~1.5x faster on CPU), other tensors untouched.

    ``module.to(memory_format=...)`` would also restride 4-D buffers such as dlib's
    (1, 3, 1, 1) ``rgb_mean``, which DDP's buffer broadcast then refuses (overlapping
    memory), so only convolutions are converted.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            m.to(memory_format=torch.channels_last)
    return module


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


# --------------------------------------------------------------------------- saved model


class QualityModel(nn.Module):
    """Images (float NCHW RGB in [0, 255], aligned to ``template``) -> quality.

    ``forward`` returns the quality in the label scale of the method it was distilled
    from (via the stored label normalisation) or, with ``normalized=True``, the raw
    regression output in the training target scale ([0, 1] for rank/minmax).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: QualityHead,
        label_norm: LabelNorm,
        *,
        backbone_name: str,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.label_norm = label_norm
        self.backbone_name = backbone_name
        self.template = str(getattr(backbone, "template", "arcface112"))
        self.input_size = tuple(getattr(backbone, "input_size", (112, 112)))
        self.config = dict(config or {})
        self.register_buffer("_xs", torch.tensor(label_norm.xs or [0.0], dtype=torch.float32))
        self.register_buffer("_ys", torch.tensor(label_norm.ys or [0.0], dtype=torch.float32))

    def normalized_quality(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)).squeeze(-1)

    def to_label_scale(self, t: torch.Tensor) -> torch.Tensor:
        """Torch version of ``LabelNorm.inverse`` (piecewise linear, clamped for rank)."""
        kind = self.label_norm.kind
        if kind == "none":
            return t
        if kind == "minmax":
            lo, hi = self._xs[0], self._xs[1]
            return t * (hi - lo) + lo
        if self._xs.numel() == 1:
            return torch.full_like(t, float(self._xs[0]))
        ys, xs = self._ys.to(t.dtype), self._xs.to(t.dtype)
        tc = t.clamp(ys[0], ys[-1])
        i = torch.searchsorted(ys, tc.contiguous(), right=True).clamp(1, ys.numel() - 1)
        y0, y1, x0, x1 = ys[i - 1], ys[i], xs[i - 1], xs[i]
        return x0 + (tc - y0) * (x1 - x0) / (y1 - y0)

    def forward(self, x: torch.Tensor, normalized: bool = False) -> torch.Tensor:
        t = self.normalized_quality(x)
        return t if normalized else self.to_label_scale(t.float())


def save_quality_model(
    path: str | Path,
    student: AIKDStudent,
    *,
    backbone_name: str,
    label_norm: LabelNorm,
    config: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model.pt``: student weights, backbone name, template, label norm, config."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": MODEL_FORMAT,
        "backbone": backbone_name,
        "template": str(getattr(student.backbone, "template", "")),
        "input_size": list(getattr(student.backbone, "input_size", ())),
        "embedding_dim": int(student.backbone.embedding_dim),
        "backbone_state": {k: v.detach().cpu() for k, v in student.backbone.state_dict().items()},
        "head_state": {k: v.detach().cpu() for k, v in student.head.state_dict().items()},
        "head_unit_input": bool(student.head.unit_input),
        "label_norm": label_norm.to_dict(),
        "config": dict(config),
        "extra": dict(extra or {}),
    }
    tmp = p.with_name(f".{p.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(p)
    return p


def load_quality_model(path: str | Path, map_location: str | torch.device = "cpu") -> QualityModel:
    """Rebuild the :class:`QualityModel` saved by training (eval mode, no gradients)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"quality model not found: {p}")
    payload = torch.load(p, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{p}: not an aikd quality model (format {MODEL_FORMAT})")
    name = payload["backbone"]
    backbone = _bare_backbone(name, p)
    backbone.load_state_dict(payload["backbone_state"])
    # Files written before the key existed had heads on the raw embedding.
    head = QualityHead(int(payload["embedding_dim"]), bool(payload.get("head_unit_input")))
    head.load_state_dict(payload["head_state"])
    model = QualityModel(
        backbone,
        head,
        LabelNorm.from_dict(payload["label_norm"]),
        backbone_name=name,
        config=payload.get("config"),
    )
    return model.eval().requires_grad_(False)


def _bare_backbone(name: str, source: Path) -> nn.Module:
    """The architecture only (weights come from the model file): no dlib file needed."""
    if name == "dlib_resnet":
        return DlibResNet()
    if name in IRESNET_LAYERS:
        return iresnet(name)
    raise ValueError(f"{source}: unknown backbone {name!r}; available: {available_backbones()}")


@torch.inference_mode()
def predict_quality(
    model: QualityModel,
    rows: pd.DataFrame,
    landmarks: pd.DataFrame | None = None,
    *,
    batch_size: int = 64,
    workers: int = 1,
    normalized: bool = False,
    channels_last: bool = True,
) -> np.ndarray:
    """Quality of every row (``root``, ``path``), aligned to the model's template with
    ``landmarks`` (a detector's table: path, x0..y4[, status]) or the rows' own x0..y4.

    Returns a float64 array aligned with ``rows``, in the label scale (``normalized=False``)
    or the training target scale; NaN where the image cannot be read or the table has no
    usable detection, so the caller decides how to treat it. ``channels_last`` converts
    the model's convolutions in place (faster on CPU, same results).
    """
    out = np.full(len(rows), np.nan)
    lms = landmarks_for(rows, landmarks)
    idx_ok = np.flatnonzero(np.isfinite(lms).all(axis=(1, 2)))
    if idx_ok.size == 0:
        return out
    files = [str(Path(r) / p) for r, p in zip(rows["root"], rows["path"], strict=True)]
    device = next(model.parameters()).device
    if channels_last:
        to_channels_last(model)
    for idx, batch, _bad in iter_faces(
        [files[i] for i in idx_ok], lms[idx_ok], model.template,
        batch_size=batch_size, workers=workers,
    ):
        if batch is None:
            continue
        x = to_float_input(batch.to(device), channels_last)
        out[idx_ok[idx]] = model(x, normalized=normalized).float().cpu().numpy()
    return out


def state_digest(module: nn.Module) -> str:
    """sha256 over every parameter and buffer (name + bytes): equal digests = equal weights."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def tensors_equal(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity in float32 (bf16 embeddings lose too much for 1 - cos)."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)


def numpy_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(an * bn, axis=1)
