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


def labelled_lfw_rows(lfw_root: Path, lfw_reference: pd.DataFrame, n_train: int,
                      n_val: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tiny training data from real LFW faces: ``n_train`` train rows spread over the
    sorted reference table and ``n_val`` val rows of other identities with >= 2 images,
    each with a seeded random label (the distill tests' rows)."""
    ref = lfw_reference.sort_values("path").reset_index(drop=True)
    ref.insert(0, "root", str(lfw_root))
    ref["identity"] = ref["path"].str.split("/").str[-2]
    many = ref["identity"].map(ref["identity"].value_counts()) >= 2
    val = ref[many].head(n_val).reset_index(drop=True)
    rest = ref[~ref["identity"].isin(set(val["identity"]))]
    train = rest.iloc[:: len(rest) // n_train].head(n_train).reset_index(drop=True)
    train["quality"] = np.random.default_rng(0).uniform(0.2, 0.9, len(train))
    val["quality"] = np.random.default_rng(1).uniform(0.2, 0.9, len(val))
    return train, val
