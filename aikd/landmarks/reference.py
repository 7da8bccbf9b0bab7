"""The datasets' own landmarks as a "detector", so they flow through the same tables.

LFW ships 5 points per image (`landmarks_5pt.csv`); YTF ships 68 iBUG points
(`keypoints_68pt.csv`) that `mapping_68_to_5` reduces to the 5-point template order. Any
other dataset can provide its own `landmarks_5pt.csv` (columns ``path,x0,y0,...,x4,y4``,
paths relative to the dataset root); without one every image gets status ``no_reference``.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from aikd.landmarks.base import POINT_COLUMNS, Detection, LandmarkDetector

FIVE_POINT_FILE = "landmarks_5pt.csv"
SIXTY_EIGHT_POINT_FILE = "keypoints_68pt.csv"

# iBUG 68-point indices: eyes 36-41 (image-left eye) and 42-47 (image-right eye), nose
# tip 30, mouth corners 48 (image-left) and 54 (image-right).
_LEFT_EYE = list(range(36, 42))
_RIGHT_EYE = list(range(42, 48))
_NOSE_TIP = 30
_MOUTH_LEFT = 48
_MOUTH_RIGHT = 54


def mapping_68_to_5(points68: Any) -> np.ndarray:
    """Reduce iBUG 68-point landmarks to the 5 template points.

    Eye centres are the means of the six eye-contour points (the 68-point scheme has no
    pupil), nose tip and mouth corners are taken as they are. Accepts (68, 2), a flat 136
    vector ``x0, y0, ..., x67, y67``, or a batch (..., 68, 2); returns (..., 5, 2) float64.
    """
    pts = np.asarray(points68, dtype=np.float64)
    if pts.shape == (136,):
        pts = pts.reshape(68, 2)
    if pts.ndim < 2 or pts.shape[-2:] != (68, 2):
        raise ValueError(f"expected 68 (x, y) points, got shape {pts.shape}")
    return np.stack(
        [
            pts[..., _LEFT_EYE, :].mean(axis=-2),
            pts[..., _RIGHT_EYE, :].mean(axis=-2),
            pts[..., _NOSE_TIP, :],
            pts[..., _MOUTH_LEFT, :],
            pts[..., _MOUTH_RIGHT, :],
        ],
        axis=-2,
    )


def _normalise_path(path: str) -> str:
    """Relative paths compare equal whatever separator or ``./`` prefix they were written with."""
    return PurePosixPath(str(path).replace("\\", "/")).as_posix()


def _read_five_point_csv(csv: Path) -> pd.DataFrame:
    table = pd.read_csv(csv)
    missing = [c for c in ["path", *POINT_COLUMNS] if c not in table.columns]
    if missing:
        raise ValueError(f"{csv}: missing columns {missing}")
    out = table[["path", *POINT_COLUMNS]].copy()
    out[POINT_COLUMNS] = out[POINT_COLUMNS].astype(np.float64)
    return out


def _read_68_point_csv(csv: Path) -> pd.DataFrame:
    table = pd.read_csv(csv)
    cols = [f"{axis}{i}" for i in range(68) for axis in ("x", "y")]
    missing = [c for c in ["path", *cols] if c not in table.columns]
    if missing:
        raise ValueError(f"{csv}: missing columns {missing[:6]}{'...' if len(missing) > 6 else ''}")
    five = mapping_68_to_5(table[cols].to_numpy(dtype=np.float64).reshape(-1, 68, 2))
    out = pd.DataFrame(five.reshape(-1, 10), columns=POINT_COLUMNS)
    out.insert(0, "path", table["path"].to_numpy())
    return out


def load_reference_landmarks(dataset: str, root: str | Path) -> pd.DataFrame:
    """The dataset's own 5-point landmarks: DataFrame ``path, x0, y0, ..., x4, y4``.

    ``lfw`` reads ``landmarks_5pt.csv``; ``ytf`` maps ``keypoints_68pt.csv`` to 5 points;
    any other dataset reads a user-supplied ``landmarks_5pt.csv`` from its root. Paths are
    relative to ``root``, as in the manifest. Raises FileNotFoundError when there is none.
    """
    root = Path(root)
    five, sixty_eight = root / FIVE_POINT_FILE, root / SIXTY_EIGHT_POINT_FILE
    if dataset == "ytf" and sixty_eight.is_file():
        out = _read_68_point_csv(sixty_eight)
    elif five.is_file():
        out = _read_five_point_csv(five)
    else:
        expected = sixty_eight if dataset == "ytf" else five
        raise FileNotFoundError(
            f"no reference landmarks for dataset {dataset!r}: {expected} does not exist"
        )
    out["path"] = out["path"].map(_normalise_path)
    return out.reset_index(drop=True)


class ReferenceDetector(LandmarkDetector):
    """Looks landmarks up by (dataset, root, path) instead of looking at pixels.

    Tables are loaded once per (dataset, root) and cached on the instance. The runner calls
    `lookup`; `detect` on bare pixels cannot know which file they came from and therefore
    answers ``no_reference``.
    """

    name = "reference"
    reads_pixels = False

    def __init__(self, threads: int | None = None) -> None:
        super().__init__(threads)
        self._tables: dict[tuple[str, str], dict[str, np.ndarray] | str] = {}

    def _table(self, dataset: str, root: str | Path) -> dict[str, np.ndarray] | str:
        """path -> (5, 2) points, or the reason why the dataset has no reference."""
        key = (str(dataset), str(Path(root).resolve()))
        if key not in self._tables:
            try:
                ref = load_reference_landmarks(dataset, root)
            except FileNotFoundError as exc:
                self._tables[key] = str(exc)
            else:
                pts = ref[POINT_COLUMNS].to_numpy(dtype=np.float64).reshape(-1, 5, 2)
                self._tables[key] = dict(zip(ref["path"], pts, strict=True))
        return self._tables[key]

    def lookup(self, dataset: str, root: str | Path, path: str) -> Detection:
        """Reference landmarks of one image of a dataset, or a ``no_reference`` row."""
        table = self._table(dataset, root)
        if isinstance(table, str):
            return Detection.failed("no_reference", table)
        pts = table.get(_normalise_path(path))
        if pts is None:
            return Detection.failed("no_reference", f"{path}: not in the reference table")
        if not np.all(np.isfinite(pts)):
            return Detection.failed("no_reference", f"{path}: reference landmarks incomplete")
        return Detection(status="ok", points=pts.copy(), n_faces=1)

    def _detect(self, rgb: np.ndarray) -> Detection:
        return Detection.failed(
            "no_reference", "reference landmarks are looked up by file path, not from pixels"
        )
