"""The Ray engine on a real two-node Ray cluster gives the local engine's tables.

One session-scoped cluster (head + one more node on 127.0.0.1, one CPU and an 80 MB object
store each) runs the per-image stages' chunk functions on an actor pool; every test
compares with the same call on the local engine (the independent expectation): same rows
in the same order, same statuses and failure messages (an unreadable file included),
values within ATOL. The Ray actors run one torch thread, the local engine the test
process's, so float sums may be ordered differently: hence a tolerance, not equality.
Every Ray run starts its actors afresh (seconds each), so CI (``-m "not slow"``) runs the
embed comparison and the resume; the quality, landmarks and score ones are ``slow``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from aikd.data.io import vectors_table, write_parquet_atomic
from aikd.data.shards import shard_dir_of
from aikd.embed import embed_rows, embed_table
from aikd.engine import EngineSettings, engine_settings
from aikd.landmarks.base import POINT_COLUMNS

REPO = Path(__file__).resolve().parents[1]
#: Embeddings and qualities: |ray - local| below this (unit-norm-scale 128-D descriptors).
ATOL = 1e-4
#: Landmarks in pixels (a detector's float output on a 250 px image).
ATOL_PX = 1e-3
MB = 2**20

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_engine() -> Iterator[EngineSettings]:
    """A local two-node Ray cluster; the engine settings that use it (chunks of 4 rows).
    Module-scoped: this driver can hold one Ray connection at a time, and the tuning
    tests' session Ray (tests/test_tuning.py) starts after this cluster is shut down."""
    from ray.cluster_utils import Cluster

    old = os.environ.get("PYTHONPATH")
    # The workers import aikd from this checkout, whichever one is installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), old]))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 80 * MB, "include_dashboard": False})
    cluster.add_node(num_cpus=1, object_store_memory=80 * MB)
    ray.init(address=cluster.address, include_dashboard=False, logging_level="WARNING")
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        yield EngineSettings(kind="ray", address=cluster.address, num_workers=2,
                             batch_size=4, threads=1)
    finally:
        ray.shutdown()
        cluster.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    from aikd.models.registry import load_backbone

    return load_backbone("dlib_resnet").eval()


@pytest.fixture()
def rows(lfw_root: Path, lfw_sample: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    """14 LFW faces with their reference landmarks and one file of random bytes."""
    good = lfw_sample.head(14).assign(root=str(lfw_root))
    (tmp_path / "random.jpg").write_bytes(np.random.default_rng(0).bytes(64))
    bad = good.iloc[[0]].assign(root=str(tmp_path), path="random.jpg")
    return pd.concat([good.iloc[:5], bad, good.iloc[5:]], ignore_index=True)


def test_settings_default_to_local_and_ray_address_overrides(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from aikd.config import load_params
    from aikd.engine import ray_address

    params = load_params(REPO / "params.yaml")
    assert engine_settings(params).kind == "local"
    assert engine_settings({}) == EngineSettings()
    ray_params = load_params(REPO / "params.yaml", ["engine.kind=ray",
                                                    "engine.address=10.0.0.1:6379"])
    cfg = engine_settings(ray_params)
    assert cfg.is_ray
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(cfg) == "10.0.0.1:6379"
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert ray_address(cfg) == "ray://head:10001"
    with pytest.raises(ValueError, match="engine.kind"):
        EngineSettings(kind="dask")


def test_embed_on_ray_equals_local(ray_engine: EngineSettings, backbone: torch.nn.Module,
                                   rows: pd.DataFrame, tmp_path: Path) -> None:
    local = embed_table(backbone, rows, tmp_path / "local.parquet", batch_size=4, workers=0,
                        progress=False)
    on_ray = embed_table(backbone, rows, tmp_path / "ray.parquet", batch_size=4,
                         progress=False, engine=ray_engine)
    (meta_l, vec_l, failed_l), (meta_r, vec_r, failed_r) = local, on_ray
    assert meta_r["path"].tolist() == meta_l["path"].tolist() == [
        p for p in rows["path"] if p != "random.jpg"]
    assert vec_r.shape == vec_l.shape == (14, 128)
    np.testing.assert_allclose(vec_r, vec_l, rtol=0, atol=ATOL)
    pd.testing.assert_frame_equal(failed_r, failed_l)
    assert failed_l["path"].tolist() == ["random.jpg"]
    assert "random.jpg" in failed_l["message"].iloc[0]
    assert not shard_dir_of(tmp_path / "ray.parquet").exists()


def test_ray_rerun_keeps_the_shards_already_written(
        ray_engine: EngineSettings, backbone: torch.nn.Module, rows: pd.DataFrame,
        tmp_path: Path) -> None:
    """A killed run leaves shards; the rerun computes only the others. Shard 1 here holds
    marked values (zeros), so a recomputed shard would show: it must come back as is."""
    out = tmp_path / "emb.parquet"
    shards = shard_dir_of(out)
    shards.mkdir()
    (shards / "chunk_size.txt").write_text(str(ray_engine.batch_size))
    messages = embed_rows(backbone, rows.iloc[4:8], batch_size=4, workers=0).column("message")
    marked = vectors_table(rows["path"].iloc[4:8].tolist(), np.zeros((4, 128), np.float32),
                           message=messages.to_pylist())
    write_parquet_atomic(marked, shards / "00001.parquet")

    meta, vectors, failed = embed_table(backbone, rows, out, batch_size=4, progress=False,
                                        engine=ray_engine)
    expect_meta, expect, expect_failed = embed_table(
        backbone, rows, tmp_path / "local.parquet", batch_size=4, workers=0, progress=False)
    assert meta["path"].tolist() == expect_meta["path"].tolist()
    kept = meta["path"].isin(rows["path"].iloc[4:8]).to_numpy()
    assert kept.sum() == 3  # the shard's 4 rows less the unreadable one
    assert (vectors[kept] == 0).all()  # reused, not recomputed
    np.testing.assert_allclose(vectors[~kept], expect[~kept], rtol=0, atol=ATOL)
    pd.testing.assert_frame_equal(failed, expect_failed)


def test_shards_of_another_chunk_size_are_not_reused(tmp_path: Path,
                                                     backbone: torch.nn.Module,
                                                     rows: pd.DataFrame) -> None:
    """Shard k means rows k*size.. only for one size: a folder of another is emptied."""
    out = tmp_path / "emb.parquet"
    shards = shard_dir_of(out)
    shards.mkdir()
    (shards / "chunk_size.txt").write_text("4")
    write_parquet_atomic(embed_rows(backbone, rows.iloc[4:8], batch_size=4, workers=0),
                         shards / "00000.parquet")  # rows 4:8: wrong for chunks of 8
    meta, vectors, _ = embed_table(backbone, rows.head(8), out, batch_size=4, chunk_size=8,
                                   workers=0, progress=False)
    assert meta["path"].tolist() == [p for p in rows["path"].head(8) if p != "random.jpg"]
    direct = embed_rows(backbone, rows.head(8), batch_size=4, workers=0)
    ok = np.array(direct.column("message").to_pylist()) == ""
    want = np.stack(direct.column("embedding").to_numpy(zero_copy_only=False))[ok]
    np.testing.assert_allclose(vectors, want, rtol=0, atol=ATOL)


@pytest.mark.slow  # a Ray Data run each (~5-15 s of actor start-up); CI: embed
def test_quality_on_ray_equals_local(ray_engine: EngineSettings, backbone: torch.nn.Module,
                                     rows: pd.DataFrame, tmp_path: Path) -> None:
    from aikd.fiqa.baselines import flip_consistency
    from aikd.quality import ColumnScorer, score_faces

    rows = rows.copy()
    rows.loc[2, POINT_COLUMNS] = np.nan  # no landmarks: a status row, no work
    scorers = [ColumnScorer("flip", lambda x: flip_consistency(backbone, x)),
               ColumnScorer("brightness", lambda x: x.mean(dim=(1, 2, 3)).numpy())]
    kw = dict(signature="test", batch_size=4, progress=False)
    local = score_faces(rows, scorers, "dlib150", tmp_path / "local.parquet", workers=0, **kw)
    on_ray = score_faces(rows, scorers, "dlib150", tmp_path / "ray.parquet",
                         engine=ray_engine, **kw)
    assert on_ray["path"].tolist() == local["path"].tolist() == rows["path"].tolist()
    assert on_ray["status"].tolist() == local["status"].tolist()
    assert local["status"].iloc[2] == "no_landmarks" and "random.jpg" in local["status"].iloc[5]
    np.testing.assert_allclose(on_ray[["flip", "brightness"]], local[["flip", "brightness"]],
                               rtol=0, atol=ATOL)


@pytest.mark.slow  # a Ray Data run each (~5-15 s of actor start-up); CI: embed
def test_landmarks_on_ray_equal_local(ray_engine: EngineSettings, rows: pd.DataFrame,
                                      tmp_path: Path) -> None:
    from aikd.landmarks.registry import available_detectors
    from aikd.landmarks.runner import partial_path, run_landmarks

    if "retinaface" not in available_detectors():
        pytest.skip("retinaface is not installed")
    manifest = rows.head(8)[["root", "path"]].assign(dataset="lfw")
    manifest = pd.concat([manifest, manifest.iloc[[0]].assign(path="missing.jpg")],
                         ignore_index=True)
    kw = dict(batch_size=4, checkpoint_every=4, progress=False, threads=1)
    local = run_landmarks(manifest, "retinaface", tmp_path / "local.parquet", **kw)
    on_ray = run_landmarks(manifest, "retinaface", tmp_path / "ray.parquet",
                           engine=ray_engine, **kw)
    text = ["path", "dataset", "detector", "status", "message", "n_faces"]
    pd.testing.assert_frame_equal(on_ray[text], local[text])
    assert local.set_index("path").loc["random.jpg", "status"] == "unreadable"
    assert local.set_index("path").loc["missing.jpg", "status"] == "unreadable"
    np.testing.assert_allclose(on_ray[POINT_COLUMNS], local[POINT_COLUMNS], rtol=0,
                               atol=ATOL_PX)
    assert (local["status"] == "ok").sum() == 7
    assert not partial_path(tmp_path / "ray.parquet").exists()


@pytest.mark.slow  # a Ray Data run each (~5-15 s of actor start-up); CI: embed
def test_score_on_ray_equals_local(ray_engine: EngineSettings, backbone: torch.nn.Module,
                                   rows: pd.DataFrame, tmp_path: Path) -> None:
    from aikd.distill.data import LabelNorm
    from aikd.distill.model import QualityHead, QualityModel
    from aikd.landmarks.registry import available_detectors
    from aikd.scoring import score_to_csv
    from aikd.scoring.scorer import QualityScorer

    if "retinaface" not in available_detectors():
        pytest.skip("retinaface is not installed")
    head = QualityHead(backbone.embedding_dim)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in head.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    model = QualityModel(backbone, head, LabelNorm.fit(np.array([0.0, 1.0]), "minmax"),
                         backbone_name="dlib_resnet").eval()
    scorer = QualityScorer(model, "retinaface", batch_size=4, threads=1, backend="torch")
    images = rows.head(7)[["root", "path"]]  # raw photos: the detector runs on them
    local = score_to_csv(scorer, images, tmp_path / "local.csv", progress=False)
    on_ray = score_to_csv(scorer, images, tmp_path / "ray.csv", progress=False,
                          engine=ray_engine)
    assert on_ray.counts == local.counts and local.counts["unreadable"] == 1
    a, b = pd.read_csv(tmp_path / "local.csv"), pd.read_csv(tmp_path / "ray.csv")
    pd.testing.assert_frame_equal(b[["path", "status", "message"]],
                                  a[["path", "status", "message"]])
    np.testing.assert_allclose(b["quality"], a["quality"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(b[POINT_COLUMNS], a[POINT_COLUMNS], rtol=0, atol=ATOL_PX)
