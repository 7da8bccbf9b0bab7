"""Simulated detector disagreement: landmark jitter and aligned/misaligned training pairs.

AI-KD's only augmentation: shift each landmark coordinate by U[-p, p] and re-align, so the
student sees the face framed as another detector would frame it.
"""

from __future__ import annotations

from typing import Any, Literal

import albumentations as A
import numpy as np

from aikd.align import align_to_template, inter_ocular_distance

JitterUnits = Literal["px", "iod"]


class LandmarkJitter(A.DualTransform):
    """Add an independent U[-max_shift, max_shift] offset to every keypoint coordinate.

    The image is returned untouched. With `units="iod"` the shift is a fraction of the
    face's inter-ocular distance (keypoints 0 and 1), so small and large faces are
    misaligned alike. Randomness comes from albumentations' generator, seeded through
    `A.Compose(..., seed=...)`; inputs are never modified in place.
    """

    class InitSchema(A.core.transforms_interface.BaseTransformInitSchema):
        max_shift: float
        units: Literal["px", "iod"]

    def __init__(self, max_shift: float = 3.0, units: JitterUnits = "px", p: float = 1.0):
        super().__init__(p=p)
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.max_shift = float(max_shift)
        self.units = units

    @property
    def targets_as_params(self) -> list[str]:
        return ["keypoints"]

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        kps = np.asarray(data.get("keypoints", np.zeros((0, 2))), dtype=np.float64)
        shift = self.max_shift
        if self.units == "iod":
            if len(kps) < 2:
                raise ValueError("units='iod' needs at least the two eye keypoints")
            shift *= inter_ocular_distance(kps[:2, :2])
        offsets = self.random_generator.uniform(-shift, shift, size=(len(kps), 2))
        return {"offsets": offsets}

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return img

    def apply_to_keypoints(
        self, keypoints: np.ndarray, offsets: np.ndarray, **params: Any
    ) -> np.ndarray:
        out = np.array(keypoints, dtype=np.float64, copy=True)
        out[:, :2] += offsets[: len(out)]
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("max_shift", "units")


def jitter_pipeline(max_shift: float, units: JitterUnits = "px", seed: int | None = 0) -> A.Compose:
    """A seeded Compose that jitters 5 (x, y) landmarks and keeps points outside the image."""
    return A.Compose(
        [LandmarkJitter(max_shift=max_shift, units=units, p=1.0)],
        keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
        seed=seed,
    )


def flip_pipeline(p: float) -> A.Compose:
    """A mirror flip of an aligned face with probability ``p`` (seed it per sample with
    ``set_random_seed``): the template is left-right symmetric, so a flipped aligned face
    is an aligned face of the mirrored photo."""
    return A.Compose([A.HorizontalFlip(p=p)], seed=0)


def jitter_landmarks(pipeline: A.Compose, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Apply a jitter pipeline to (5,2) landmarks of `image`; returns a new array.

    albumentations carries keypoints as float32; only the offset is taken from its output,
    so un-jittered points (max_shift 0, p 0) come back bit-identical.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    out = pipeline(image=image, keypoints=lm)
    moved = np.asarray(out["keypoints"], dtype=np.float64)[:, :2]
    return lm + (moved - lm.astype(np.float32).astype(np.float64))


def aligned_pair(
    image: np.ndarray,
    landmarks: np.ndarray,
    template: str,
    pipeline: A.Compose,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, x̂, jittered landmarks): the face aligned from its landmarks and from jittered ones.

    The jitter acts in source-image pixels, before alignment, as a different detector would.
    """
    x, _ = align_to_template(image, landmarks, template)
    jittered = jitter_landmarks(pipeline, image, landmarks)
    x_hat, _ = align_to_template(image, jittered, template)
    return x, x_hat, jittered
