"""Aligned-face batching and the resumable per-row table runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from aikd.data.shards import build_in_shards, shard_dir_of
from aikd.faces import iter_aligned, iter_faces, landmarks_array, row_files, to_float_input


def _rows(lfw_sample: pd.DataFrame, lfw_root: Path, tmp_path: Path) -> pd.DataFrame:
    rows = lfw_sample.head(5).assign(root=str(lfw_root))
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"not a jpeg")
    corrupt = rows.iloc[[0]].assign(root=str(tmp_path), path="corrupt.jpg")
    return pd.concat([rows.iloc[:2], corrupt, rows.iloc[2:]], ignore_index=True)


def test_iter_aligned_is_iter_faces_as_channels_last_float(lfw_sample: pd.DataFrame,
                                                           lfw_root: Path,
                                                           tmp_path: Path) -> None:
    """One batching path: the float batch is the uint8 batch converted, exactly, in the
    channels-last layout the backbones were measured with (and worker processes do not
    change a bit)."""
    rows = _rows(lfw_sample, lfw_root, tmp_path)
    args = (row_files(rows), landmarks_array(rows), "dlib150")
    raw = list(iter_faces(*args, batch_size=4, workers=0))
    floats = list(iter_aligned(*args, batch_size=4, workers=1))
    assert [b[0].tolist() for b in raw] == [[0, 1, 3], [4, 5]]
    assert raw[0][2][0][0] == 2 and "corrupt.jpg" in raw[0][2][0][1]
    for (i_u8, u8, bad_u8), (i_f, f, bad_f) in zip(raw, floats, strict=True):
        assert u8.dtype == torch.uint8 and u8.shape[1:] == (150, 150, 3)
        assert np.array_equal(i_u8, i_f) and bad_u8 == bad_f
        assert f.dtype == torch.float32 and f.shape == (len(i_u8), 3, 150, 150)
        assert f.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(f, u8.permute(0, 3, 1, 2).float())
        assert f.stride() == to_float_input(u8, True).stride()
        assert to_float_input(u8, False).is_contiguous()


def _frame(lo: int, hi: int) -> pd.DataFrame:
    return pd.DataFrame({"row": np.arange(lo, hi), "square": np.arange(lo, hi) ** 2})


class _Chunks:
    """A chunk function that records which chunks it computed and can fail at one."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.done: list[int] = []
        self.fail_at = fail_at

    def __call__(self, lo: int, hi: int, bar) -> pd.DataFrame:
        if lo == self.fail_at:
            raise KeyboardInterrupt("simulated kill")
        self.done.append(lo)
        bar.update(hi - lo)
        return _frame(lo, hi)


def _merge(out: Path):
    def merge(shards: list[Path]) -> pd.DataFrame:
        table = pd.concat([pd.read_parquet(s) for s in shards], ignore_index=True)
        table.to_parquet(out)
        return table
    return merge


def test_build_in_shards_resumes_and_checks_the_signature(tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    kw = dict(desc="t", progress=False, signature="v1")
    with pytest.raises(KeyboardInterrupt):
        build_in_shards(out, 10, 4, _Chunks(fail_at=8), _merge(out), **kw)
    assert sorted(p.name for p in shard_dir_of(out).glob("*.parquet")) == [
        "00000.parquet", "00001.parquet"]
    again = _Chunks()
    table = build_in_shards(out, 10, 4, again, _merge(out), **kw)
    assert again.done == [8]  # finished shards are skipped
    pd.testing.assert_frame_equal(table, _frame(0, 10))
    pd.testing.assert_frame_equal(pd.read_parquet(out), _frame(0, 10))
    assert not shard_dir_of(out).exists()

    with pytest.raises(KeyboardInterrupt):
        build_in_shards(out, 10, 4, _Chunks(fail_at=8), _merge(out), **kw)
    other = _Chunks()
    build_in_shards(out, 10, 4, other, _merge(out), **{**kw, "signature": "v2"})
    assert other.done == [0, 4, 8]  # shards of another computation are not reused
