"""Disagreement with the training alignment and the jitter range p it suggests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aikd.landmarks.base import POINT_COLUMNS
from aikd.landmarks.report import (
    add_training_disagreement,
    jitter_nme_factor,
    suggest_jitter_p,
    training_disagreement,
)


def faces(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 5, 2) plausible 5-point faces of varied size and position."""
    template = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]])
    scale = rng.uniform(0.5, 3.0, size=(n, 1, 1))
    shift = rng.uniform(0, 200, size=(n, 1, 2))
    return template * scale + shift


def jittered(points: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """U[-p, p] per coordinate in inter-ocular units, like LandmarkJitter(units='iod')."""
    iod = np.linalg.norm(points[:, 0] - points[:, 1], axis=-1)[:, None, None]
    return points + rng.uniform(-1, 1, size=points.shape) * p * iod


def table(points: np.ndarray, paths: list[str], dataset: str = "d") -> pd.DataFrame:
    df = pd.DataFrame(points.reshape(len(points), 10), columns=POINT_COLUMNS)
    return df.assign(path=paths, dataset=dataset, status="ok")


def test_factor_is_the_median_five_point_nme() -> None:
    factor = jitter_nme_factor()
    assert 0.74 < factor < 0.79  # one point: mean 0.7652; a 5-point mean's median is near it
    assert jitter_nme_factor(seed=1) == pytest.approx(factor, rel=0.01)


@pytest.mark.parametrize("p", [0.05, 0.1, 0.17])
def test_suggestion_recovers_the_jitter_used(p: float) -> None:
    rng = np.random.default_rng(11)
    base = faces(3000, rng)
    paths = [f"img{i}.jpg" for i in range(len(base))]
    training = table(base, paths)
    # three detectors jittered by 0.7p, p and 1.4p: their median-of-medians is p's
    dets = {name: table(jittered(base, k * p, rng), paths)
            for name, k in (("a", 0.7), ("b", 1.0), ("c", 1.4))}
    result = suggest_jitter_p(training_disagreement(dets, training))
    assert result["jitter_p_suggested"] == pytest.approx(p, rel=0.10)


def test_stage_uses_validation_images_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    base = faces(400, rng)
    paths = [f"images/p{i % 40}/{i}.jpg" for i in range(len(base))]
    split = np.where(np.arange(len(base)) < 200, "val", "test")
    man_dir, lm_dir, out = tmp_path / "manifests", tmp_path / "landmarks", tmp_path / "report"
    man_dir.mkdir()
    pd.DataFrame({"path": paths, "identity": [p.split("/")[1] for p in paths],
                  "split": split}).to_parquet(man_dir / "d.parquet")
    (lm_dir / "ref").mkdir(parents=True)
    (lm_dir / "other").mkdir()
    table(base, paths).to_parquet(lm_dir / "ref" / "d.parquet")
    # val images jittered by 0.1, test images by 0.5: only 0.1 may come back
    other = np.where((split == "val")[:, None, None], jittered(base, 0.1, rng),
                     jittered(base, 0.5, rng))
    table(other, paths).to_parquet(lm_dir / "other" / "d.parquet")
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"d/other": {"nme_median": 0.3}}))
    (out / "agreement.md").write_text("# Landmark agreement\n")
    params = {"datasets": {"d": {}}, "manifest": {"out_dir": str(man_dir)},
              "landmarks": {"out_dir": str(lm_dir), "detectors": ["ref", "other"],
                            "training_detector": "ref"},
              "landmark_report": {"out_dir": str(out)}}
    result = add_training_disagreement(params)
    assert result["table"]["n_compared"].tolist() == [200]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["d/other"] == {"nme_median": 0.3}  # the stage's metrics are kept
    assert metrics["jitter_p_suggested"] == pytest.approx(0.1, rel=0.1)
    md = (out / "agreement.md").read_text()
    assert md.startswith("# Landmark agreement") and "jitter_units: iod" in md
