"""Running a frozen network over a tensor of faces in batches, as the training-free
quality methods (flip consistency, SER-FIQ) do: checked input, the model's device, eval
mode and no autograd for the duration, the model's training flag restored afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn


def as_face_batch(images: torch.Tensor | np.ndarray, batch_size: int) -> torch.Tensor:
    """``images`` as an (N, 3, H, W) tensor; ValueError naming the shape otherwise."""
    x_all = torch.as_tensor(images)
    if x_all.ndim != 4 or x_all.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got shape {tuple(x_all.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return x_all


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (CPU for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def eval_batches(model: nn.Module, x_all: torch.Tensor, batch_size: int
                 ) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, float32 batch on the model's device)`` with the model in eval mode under
    ``torch.inference_mode``; the model's training flag is restored when the loop ends."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for lo in range(0, x_all.shape[0], batch_size):
                yield lo, x_all[lo : lo + batch_size].to(device=device, dtype=torch.float32)
    finally:
        model.train(was_training)
