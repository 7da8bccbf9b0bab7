"""``load_backbone``: one entry point that returns a ready, eval-mode FR backbone by name.

Every backbone honours the same contract so quality-assessment code never special-cases a
model: ``forward(x)`` takes float32 NCHW RGB in [0, 255] and normalises internally,
``features``/``embed_from_features`` split off the final embedding layer, and the
attributes ``embedding_dim``, ``input_size`` (width, height) and ``template`` (an
``aikd.align.get_template`` name) say how to prepare the input.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from aikd.models.dlib_dat import default_dlib_model_path, read_dlib_model
from aikd.models.dlib_resnet import DlibResNet
from aikd.models.faceres import build_faceres
from aikd.models.iresnet import IRESNET_LAYERS, iresnet


class RandomWeightsWarning(UserWarning):
    """A backbone was built without trained weights; its embeddings are meaningless."""


def _as_existing_file(weights: str | Path) -> Path:
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return path


def _unwrap_checkpoint(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Accept a bare state_dict, or one under 'state_dict'/'model'; drop a DDP 'module.' prefix."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and not any(
                isinstance(v, torch.Tensor) for v in obj.values()
            ):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a state_dict (a mapping of names to tensors)")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_state_dict_checked(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str
) -> None:
    """Load ``state`` strictly, with an error that names the offending keys and shapes.

    BatchNorm ``num_batches_tracked`` counters are allowed to be missing: they only matter
    for training with momentum=None and several exported checkpoints omit them.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {missing[:5]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[:5]})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (first: {mismatched[:5]})")
        raise ValueError(f"{source} does not match {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=False)


def _load_torch_weights(model: nn.Module, weights: str | Path) -> None:
    path = _as_existing_file(weights)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{path}: cannot be read as a torch checkpoint of tensors: {exc}") from exc
    load_state_dict_checked(model, _unwrap_checkpoint(obj, path), str(path))


def _build_dlib_resnet(weights: str | Path | None) -> nn.Module:
    """dlib's trained model by default; a ``.dat`` path is parsed, anything else is torch.load-ed.

    The torch route lets a fine-tuned port (saved with ``torch.save(model.state_dict())``)
    be reloaded through the same entry point.
    """
    if weights is None:
        return DlibResNet().load_dlib_net(read_dlib_model(default_dlib_model_path()))
    path = _as_existing_file(weights)
    if path.suffix.lower() == ".dat":
        return DlibResNet().load_dlib_net(read_dlib_model(path))
    model = DlibResNet()
    _load_torch_weights(model, path)
    return model


def _iresnet_builder(name: str) -> Callable[[str | Path | None], nn.Module]:
    def build(weights: str | Path | None) -> nn.Module:
        """insightface arcface_torch ``backbone.pth``; random init (with a warning) if None."""
        model = iresnet(name)
        if weights is None:
            warnings.warn(
                f"{name}: no weights given, using random initialisation (embeddings are not "
                "meaningful); pass weights=PATH to an insightface arcface_torch backbone.pth",
                RandomWeightsWarning,
                stacklevel=3,
            )
        else:
            _load_torch_weights(model, weights)
        return model

    return build


_BUILDERS: dict[str, Callable[[str | Path | None], nn.Module]] = {
    "dlib_resnet": _build_dlib_resnet,
    "faceres": build_faceres,
    **{name: _iresnet_builder(name) for name in IRESNET_LAYERS},
}


def available_backbones() -> list[str]:
    """Names accepted by :func:`load_backbone`, sorted."""
    return sorted(_BUILDERS)


def load_backbone(name: str, weights: str | Path | None = None) -> nn.Module:
    """Build backbone ``name`` in eval mode, with ``weights`` (a file path) if given.

    * ``dlib_resnet``: dlib's 128-D ResNet, weights read from the installed
      ``face_recognition_models`` package unless ``weights`` points elsewhere.
    * ``iresnet50`` / ``iresnet100``: ArcFace 512-D backbones. With ``weights=None`` they
      are randomly initialised (a ``RandomWeightsWarning`` says so) since no weights ship
      with aikd; pass an insightface ``backbone.pth``.

    Raises ValueError for an unknown name (listing the available ones) or a checkpoint
    whose keys/shapes do not match, FileNotFoundError for a missing weights file.
    """
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(
            f"unknown backbone {name!r}; available: {', '.join(available_backbones())}"
        ) from None
    return builder(weights).eval()
