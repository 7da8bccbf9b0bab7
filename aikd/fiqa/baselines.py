"""Training-free quality baselines that any learned FIQA label should beat.

* flip consistency: a face the network understands gives nearly the same embedding for the
  image and its mirror; occlusion, blur, extreme pose or a poor crop break that symmetry.
* sharpness: variance of the Laplacian, the classic focus measure; it knows nothing about
  faces, which is what makes it a useful floor.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aikd.fiqa.batches import as_face_batch, eval_batches
from aikd.models.fused import fused_dlib

__all__ = ["flip_consistency", "sharpness"]


def flip_consistency(
    model: nn.Module, images: torch.Tensor | np.ndarray, *, batch_size: int = 64
) -> np.ndarray:
    """Cosine between the embedding of each image and of its horizontal mirror, in [-1, 1].

    ``images``: (N, 3, H, W) float in the backbone's input range ([0, 255] for dlib_resnet).
    """
    x_all = as_face_batch(images, batch_size)
    out = np.empty(x_all.shape[0], dtype=np.float64)
    net = fused_dlib(model) or model  # dlib on CPU: folded/fused, same function
    for lo, x in eval_batches(model, x_all, batch_size):
        e = net(torch.cat([x, x.flip(-1)]))
        e = F.normalize(e.to(torch.float64), dim=1)
        b = x.shape[0]
        out[lo : lo + b] = (e[:b] * e[b:]).sum(dim=1).cpu().numpy()
    return out


def sharpness(images_uint8: np.ndarray) -> np.ndarray:
    """Variance of the Laplacian of the grayscale image, per image (higher = sharper).

    Accepts one image (H, W, 3) / (H, W) or a batch (N, H, W, 3) / (N, H, W) of uint8 RGB
    (aligned faces, so every image is measured on the same face region and scale).
    """
    arr = np.asarray(images_uint8)
    if arr.dtype != np.uint8:
        raise ValueError(f"sharpness expects uint8 images, got {arr.dtype}")
    single = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)
    batch = arr[None] if single else arr
    if batch.ndim == 4 and batch.shape[-1] != 3:
        raise ValueError(f"colour images must be (N, H, W, 3), got shape {arr.shape}")
    if batch.ndim not in (3, 4):
        raise ValueError(f"expected (H, W[, 3]) or (N, H, W[, 3]) images, got shape {arr.shape}")
    out = np.empty(batch.shape[0], dtype=np.float64)
    for i, img in enumerate(batch):
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
        out[i] = float(cv2.Laplacian(gray, cv2.CV_64F).var())
    return out
