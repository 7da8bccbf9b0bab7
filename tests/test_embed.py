"""The embedding table: failures recorded, interrupted runs resumed, settings typed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from aikd.config import from_section, load_params
from aikd.embed import embed_table
from aikd.embed.stage import EmbedSettings

REPO = Path(__file__).resolve().parents[1]


class _MeanColour(torch.nn.Module):
    """A stand-in backbone: the mean of each channel, counting the faces it saw."""

    template = "dlib150"
    embedding_dim = 3

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.seen = 0
        self.fail_after = fail_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and self.seen >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.seen += x.shape[0]
        return x.mean(dim=(2, 3))


def test_embed_table_records_failures_and_resumes(lfw_sample: pd.DataFrame, lfw_root: Path,
                                                  tmp_path: Path) -> None:
    rows = lfw_sample.head(5).assign(root=str(lfw_root))
    (tmp_path / "corrupt.jpg").write_bytes(b"not a jpeg")
    rows = pd.concat([rows, rows.iloc[[0]].assign(root=str(tmp_path), path="corrupt.jpg")],
                     ignore_index=True)
    kw = dict(batch_size=2, chunk_size=2, workers=0, progress=False)
    meta, vectors, failed = embed_table(_MeanColour(), rows, tmp_path / "full.parquet", **kw)
    assert meta["path"].tolist() == rows["path"].head(5).tolist()
    assert vectors.shape == (5, 3) and np.isfinite(vectors).all()
    assert failed["path"].tolist() == ["corrupt.jpg"]

    out = tmp_path / "resumed.parquet"
    with pytest.raises(KeyboardInterrupt):
        embed_table(_MeanColour(fail_after=2), rows, out, **kw)
    again = _MeanColour()
    meta2, vectors2, failed2 = embed_table(again, rows, out, **kw)
    assert again.seen == 3  # the first chunk (2 faces) was kept
    pd.testing.assert_frame_equal(meta2, meta)
    np.testing.assert_array_equal(vectors2, vectors)
    pd.testing.assert_frame_equal(failed2, failed)
    assert (tmp_path / "full.parquet").read_bytes() == out.read_bytes()


def test_embed_settings_come_from_params_and_reject_unknown_keys() -> None:
    params = load_params(REPO / "params.yaml")
    assert from_section(EmbedSettings, params, "embed").backbone == "dlib_resnet"
    with pytest.raises(ValueError, match="batchsize"):
        from_section(EmbedSettings, load_params(REPO / "params.yaml", ["embed.batchsize=8"]),
                     "embed")
