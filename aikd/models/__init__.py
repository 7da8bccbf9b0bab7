"""Face recognition backbones in PyTorch: dlib's ResNet (exact port) and ArcFace iresnets."""

from aikd.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "dlib_dat": (
        "DlibModelFormatError",
        "DlibNet",
        "default_dlib_model_path",
        "read_dlib_model",
    ),
    "dlib_resnet": (
        "DlibResNet",
    ),
    "faceres": (
        "FaceResNet",
        "FaceresWeightsMissing",
        "build_faceres",
        "default_faceres_weights_path",
    ),
    "tfjs": (
        "TfjsFormatError",
        "TfjsGraph",
        "TfjsNode",
        "read_tfjs_graph",
    ),
    "iresnet": (
        "IResNet",
        "iresnet",
    ),
    "registry": (
        "RandomWeightsWarning",
        "available_backbones",
        "load_backbone",
        "load_state_dict_checked",
    ),
})
