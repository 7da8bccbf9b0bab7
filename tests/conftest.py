"""Shared fixtures: the demo data location and small deterministic LFW samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data").resolve()
LFW = DATA / "lfw"
YTF = DATA / "ytf"


@pytest.fixture(scope="session")
def lfw_root() -> Path:
    if not (LFW / "landmarks_5pt.csv").is_file():
        pytest.skip(f"demo data not found at {LFW}")
    return LFW


@pytest.fixture(scope="session")
def ytf_root() -> Path:
    if not (YTF / "keypoints_68pt.csv").is_file():
        pytest.skip(f"demo data not found at {YTF}")
    return YTF


@pytest.fixture(scope="session")
def lfw_reference(lfw_root: Path) -> pd.DataFrame:
    return pd.read_csv(lfw_root / "landmarks_5pt.csv")


@pytest.fixture(scope="session")
def lfw_sample(lfw_reference: pd.DataFrame) -> pd.DataFrame:
    """30 LFW images, every k-th row of the sorted reference table (deterministic)."""
    ref = lfw_reference.sort_values("path").reset_index(drop=True)
    return ref.iloc[:: len(ref) // 30].head(30).reset_index(drop=True)


def landmarks_of(row: pd.Series) -> np.ndarray:
    return np.array([[row[f"x{i}"], row[f"y{i}"]] for i in range(5)], dtype=np.float64)
