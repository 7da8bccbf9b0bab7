"""Quality scoring of evaluation faces: shared-trunk equivalence, failures, resuming."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from aikd.distill.data import LabelNorm
from aikd.distill.model import QualityHead, QualityModel
from aikd.evaluation.tables import split_method
from aikd.fiqa.baselines import flip_consistency
from aikd.quality import ColumnScorer, SharedTrunkScorer, score_faces, shared_blocks


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    from aikd.models.registry import load_backbone

    return load_backbone("dlib_resnet").eval()


def _student(backbone: torch.nn.Module, first_trained_block: int | None, seed: int,
             perturb_stem: bool = False) -> QualityModel:
    """A quality model whose blocks from ``first_trained_block`` on differ from ``backbone``."""
    g = torch.Generator().manual_seed(seed)
    bb = copy.deepcopy(backbone)
    with torch.no_grad():
        if first_trained_block is not None:
            for p in bb.blocks[first_trained_block:].parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
        if perturb_stem:
            bb.conv1.weight.add_(0.01 * torch.randn(bb.conv1.weight.shape, generator=g))
    head = QualityHead(bb.embedding_dim)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    norm = LabelNorm.fit(np.array([0.0, 1.0]), "minmax")  # identity: no clamping
    return QualityModel(bb, head, norm, backbone_name="dlib_resnet").eval()


def _faces(n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, 150, 150), generator=g) * 255.0


def test_shared_blocks_counts_identical_leading_blocks(backbone: torch.nn.Module) -> None:
    assert shared_blocks(backbone, copy.deepcopy(backbone)) == len(backbone.blocks)
    assert shared_blocks(backbone, _student(backbone, 7, 1).backbone) == 7
    assert shared_blocks(backbone, _student(backbone, 10, 1).backbone) == 10
    assert shared_blocks(backbone, _student(backbone, None, 1, perturb_stem=True).backbone) == -1


@pytest.mark.parametrize("stem", [False, True])
def test_shared_trunk_scorer_matches_each_model_alone(backbone: torch.nn.Module,
                                                      stem: bool) -> None:
    models = {"a-T": _student(backbone, 7, 1), "b-B": _student(backbone, 10, 2, stem)}
    scorer = SharedTrunkScorer(backbone, models, flip=True)
    assert scorer.k == (-1 if stem else 7)
    assert scorer.columns == ["a-T", "b-B", "flip"]
    x = _faces()
    with torch.inference_mode():
        got = scorer(x)
        for name, m in models.items():
            np.testing.assert_allclose(got[name], m(x).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["flip"], flip_consistency(backbone, x), atol=1e-5)
    # the two students really differ, so the check above is not trivially satisfied
    assert not np.allclose(got["a-T"], got["b-B"])


def test_split_method_names() -> None:
    assert split_method("sddfiqa-T") == ("sddfiqa", "T")
    assert split_method("serfiq-B") == ("serfiq", "B")
    assert split_method("flip") == ("flip", "-")
    assert split_method("my-method") == ("my-method", "-")


def _rows(lfw_sample: pd.DataFrame, lfw_root: Path, tmp_path: Path) -> pd.DataFrame:
    rows = lfw_sample.head(8).copy()
    rows.insert(0, "root", str(lfw_root))
    bad = tmp_path / "images" / "corrupt.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a jpeg")
    corrupt = rows.iloc[[0]].assign(root=str(tmp_path), path="images/corrupt.jpg")
    no_face = rows.iloc[[1]].assign(path="images/no_face.jpg", x0=np.nan)
    return pd.concat([rows, corrupt, no_face], ignore_index=True)


class _Mean:
    """A scorer that counts the faces it saw (and can fail once to simulate a kill)."""

    columns = ["mean"]

    def __init__(self, fail_after: int | None = None) -> None:
        self.seen = 0
        self.fail_after = fail_after

    def __call__(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        if self.fail_after is not None and self.seen >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.seen += x.shape[0]
        return {"mean": x.mean(dim=(1, 2, 3)).double().numpy()}


def test_score_faces_records_failures_and_resumes(lfw_sample: pd.DataFrame, lfw_root: Path,
                                                  tmp_path: Path) -> None:
    rows = _rows(lfw_sample, lfw_root, tmp_path)
    kw = dict(template="dlib150", signature="v1", batch_size=2, chunk_size=4, progress=False,
              workers=0)
    sharp = ColumnScorer("const", lambda x: np.full(x.shape[0], 2.0))
    full = score_faces(rows, [_Mean(), sharp], out_path=tmp_path / "full.parquet", **kw)
    assert list(full.columns) == ["path", "status", "mean", "const"]
    assert full["path"].tolist() == rows["path"].tolist()
    status = full.set_index("path")["status"]
    assert status["images/no_face.jpg"] == "no_landmarks"
    assert "corrupt.jpg" in status["images/corrupt.jpg"]
    ok = full["status"] == "ok"
    assert ok.sum() == 8
    assert np.isfinite(full.loc[ok, "mean"]).all() and full.loc[~ok, "mean"].isna().all()

    out = tmp_path / "resumed.parquet"
    with pytest.raises(KeyboardInterrupt):
        score_faces(rows, [_Mean(fail_after=4), sharp], out_path=out, **kw)
    shards = sorted((tmp_path / "resumed.parquet.shards").glob("*.parquet"))
    assert len(shards) == 1  # the first chunk of 4 finished before the "kill"
    again = _Mean()
    resumed = score_faces(rows, [again, sharp], out_path=out, **kw)
    assert again.seen == 4  # chunk 2 (4 faces) + chunk 3 (corrupt and no-face rows: none)
    pd.testing.assert_frame_equal(resumed, full)
    assert not (tmp_path / "resumed.parquet.shards").exists()

    # shards of another scorer set are not reused
    with pytest.raises(KeyboardInterrupt):
        score_faces(rows, [_Mean(fail_after=4), sharp], out_path=out, **kw)
    other = _Mean()
    score_faces(rows, [other, sharp], out_path=out, **{**kw, "signature": "v2"})
    assert other.seen == 8


def test_quality_settings_come_from_params_and_reject_unknown_keys() -> None:
    from aikd.config import from_section, load_params
    from aikd.quality.stage import QualitySettings

    params_file = Path(__file__).resolve().parents[1] / "params.yaml"
    cfg = from_section(QualitySettings, load_params(params_file), "quality")
    assert cfg.direct == ["serfiq"] and cfg.baselines == ["flip", "sharpness"]
    with pytest.raises(ValueError, match="treads"):
        from_section(QualitySettings, load_params(params_file, ["quality.treads=2"]), "quality")
