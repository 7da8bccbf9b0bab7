"""Face recognition backbones in PyTorch: dlib's ResNet (exact port) and ArcFace iresnets."""

from aikd.models.dlib_dat import (
    DlibModelFormatError,
    DlibNet,
    default_dlib_model_path,
    read_dlib_model,
)
from aikd.models.dlib_resnet import DlibResNet
from aikd.models.iresnet import IResNet, iresnet
from aikd.models.registry import (
    RandomWeightsWarning,
    available_backbones,
    load_backbone,
    load_state_dict_checked,
)

__all__ = [
    "DlibModelFormatError",
    "DlibNet",
    "DlibResNet",
    "IResNet",
    "RandomWeightsWarning",
    "available_backbones",
    "default_dlib_model_path",
    "iresnet",
    "load_backbone",
    "load_state_dict_checked",
    "read_dlib_model",
]
