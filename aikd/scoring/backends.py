"""Student runtimes of the scorer (`aikd.scoring.BACKENDS`): eager torch, or an ONNX
export run by onnxruntime.

``onnx`` gives 1.5x the student's images/s of eager torch, 1.34x end to end on the demo
box (benchmarks/results/score.json); exporting needs the ``onnx`` package and takes a
few seconds, so ``auto`` uses it only when installed and for jobs of at least
``AUTO_ONNX_MIN_IMAGES`` images, torch otherwise.
"""

from __future__ import annotations

import importlib.util
import io
import warnings

import torch
from torch import nn

from aikd.distill.model import QualityModel
from aikd.scoring import BACKENDS

#: 0.5-3 s of export, session and check vs ~2.5 ms saved per image end to end on the demo
#: box: break-even after a few hundred images, so small requests (a served model) stay
#: on torch.
AUTO_ONNX_MIN_IMAGES = 1000
#: Largest |onnx - torch| normalised quality accepted by the check on the first batch.
ONNX_TOLERANCE = 1e-4


def onnx_export_available() -> bool:
    """torch.onnx's exporter needs the ``onnx`` package; onnxruntime runs the result."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def check_backend(backend: str) -> str:
    """``backend`` if it can run here; a clear error for an unknown or unusable one."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "onnx" and not onnx_export_available():
        raise ImportError(
            "backend 'onnx' exports the student with torch.onnx, which needs the 'onnx' and "
            "'onnxruntime' packages (pip install onnx); or use --backend torch"
        )
    return backend


class _NormalizedQuality(nn.Module):
    """Backbone + head only: the label-scale map stays in torch (searchsorted), so both
    backends share it exactly."""

    def __init__(self, model: QualityModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.normalized_quality(x)


def export_onnx(model: QualityModel) -> bytes:
    """The student (float NCHW [0, 255] -> normalised quality) as ONNX bytes, batch dynamic.

    Uses the TorchScript exporter (``dynamo=False``): the torch.export one needs
    onnxscript, which the project does not install.
    """
    w, h = model.input_size
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer notes
        torch.onnx.export(
            _NormalizedQuality(model).eval(), (torch.zeros(2, 3, h, w),), buf, dynamo=False,
            input_names=["x"], output_names=["q"],
            dynamic_axes={"x": {0: "n"}, "q": {0: "n"}},
        )
    return buf.getvalue()
