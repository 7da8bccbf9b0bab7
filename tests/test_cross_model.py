"""Cross-model evaluation (aikd.cross_model): where a second network's embeddings live, how a
network without weights is reported instead of failing, and the evaluate/report stages with
two networks on tiny files."""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_evaluation_stage import DETECTORS, _write_fixture

from aikd.cross_model import (
    UNAVAILABLE_PATH,
    failures_path,
    fr_models_of,
    mark_unavailable,
    network_status,
)
from aikd.data.io import read_vectors, vectors_table
from aikd.paths import embeddings_path

CROSS = {"backbones": ["m2"], "splits": ["test"], "out_dir": "cross"}


def test_embeddings_path_keeps_other_networks_out_of_the_training_folder() -> None:
    params = {"embed": {"backbone": "r50", "out_dir": "emb"}, "cross_model": CROSS}
    assert embeddings_path(params, "lfw", "mtcnn") == Path("emb/mtcnn/lfw_r50.parquet")
    assert embeddings_path(params, "lfw", "mtcnn", "r50") == Path("emb/mtcnn/lfw_r50.parquet")
    assert embeddings_path(params, "lfw", "mtcnn", "m2") == Path("cross/mtcnn/lfw_m2.parquet")


def test_unavailable_network_is_reported_not_evaluated(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = {"embed": {"backbone": "r50", "out_dir": "emb"},
              "cross_model": {**CROSS, "backbones": ["m2", "m3"]}}
    cells = [("toy", "dlib"), ("toy", "mtcnn")]
    # m2: every table present; m3: marked unavailable in one cell
    for det in ("dlib", "mtcnn"):
        out = embeddings_path(params, "toy", det, "m2")
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(vectors_table(["a.jpg"], np.ones((1, 4), np.float32)), out)
    mark_unavailable(embeddings_path(params, "toy", "mtcnn", "m3"), "m3 weights missing")
    assert network_status(params, "m2", cells) is None
    assert "does not exist" in network_status(params, "m3", [("toy", "dlib")])
    assert network_status(params, "m3", [("toy", "mtcnn")]) == "m3 weights missing"
    nets, missing = fr_models_of(params, cells)
    assert nets == ["r50", "m2"] and set(missing) == {"m3"}
    meta, vectors = read_vectors(embeddings_path(params, "toy", "mtcnn", "m3"))
    assert len(meta) == 0 and vectors.shape[0] == 0
    fails = pd.read_csv(failures_path(embeddings_path(params, "toy", "mtcnn", "m3")))
    assert fails["path"].tolist() == [UNAVAILABLE_PATH]


def test_cross_embed_stage_without_weights_writes_the_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import aikd.models.registry
    from aikd.cross_model.stage import cross_embed_stage

    monkeypatch.chdir(tmp_path)

    def no_weights(name: str, weights: object = None) -> None:
        raise FileNotFoundError(f"{name}.pt not found (run the fetch script)")

    monkeypatch.setattr(aikd.models.registry, "load_backbone", no_weights)
    params = {"embed": {"backbone": "r50", "out_dir": "emb"}, "cross_model": CROSS}
    out = cross_embed_stage(params, "toy", "dlib", "m2")
    assert out == Path("cross/dlib/toy_m2.parquet") and out.is_file()
    reason = network_status(params, "m2", [("toy", "dlib")])
    assert reason is not None and "m2.pt not found" in reason
    with pytest.raises(Exception, match="embed.backbone"):
        cross_embed_stage(params, "toy", "dlib", "r50")


def _add_second_network(root: Path, params: dict, *, informative: bool) -> dict:
    """m2's embeddings of the fixture's faces: the same people, other noise (informative)
    or pure noise."""
    rng = np.random.default_rng(7)
    params = {**params, "cross_model": CROSS}
    for det in DETECTORS:
        meta, vecs = read_vectors(root / "embeddings" / det / "toy_r50.parquet")
        other = vecs + rng.normal(size=vecs.shape) * 0.5 if informative else \
            rng.normal(size=vecs.shape)
        out = root / embeddings_path(params, "toy", det, "m2")
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(vectors_table(meta["path"].tolist(), other.astype(np.float32)), out)
    return params


def test_evaluate_and_report_with_a_second_network(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import aikd.tracking
    from aikd.evaluation.report import report_stage
    from aikd.evaluation.stage import evaluate_stage

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(aikd.tracking, "stage_run", lambda *a, **k: contextlib.nullcontext())
    params = _add_second_network(tmp_path, _write_fixture(tmp_path, people=True),
                                 informative=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = evaluate_stage(params)
    res = frames["results"]
    assert set(res["fr_model"]) == {"r50", "m2"}
    assert json.loads(Path("evaluation/fr_models.json").read_text()) == {
        "evaluated": ["r50", "m2"], "not_evaluated": {}}
    none = res[(res["method"] == "none") & (res["fmr"] == 0.1)]
    by_net = none.groupby("fr_model")["fnmr0"].mean()
    # the noise network cannot verify: its error before discarding is far above r50's
    assert by_net["m2"] > by_net["r50"] + 0.2
    report_stage(params)
    metrics = json.loads(Path("metrics/evaluation.json").read_text())
    assert metrics["fr_model"] == "r50"
    cross = metrics["cross_model"]["m2"]
    assert cross["evaluated"] and cross["aikd_cells"] == 4
    rep = Path(params["evaluate"]["reports_dir"])
    # the headline stays the training network's; m2 has its own files
    assert pd.read_csv(rep / "results_long.csv")["fr_model"].unique().tolist() == ["r50"]
    assert pd.read_csv(rep / "results_long_m2.csv")["fr_model"].unique().tolist() == ["m2"]
    assert (rep / "summary_m2.md").is_file() and (rep / "benchmarks_m2.csv").is_file()
    assert (rep / "pauc_m2_mtcnn.md").is_file() and (rep / "edc" / "m2_mtcnn_tiny.png").is_file()
    summary = (rep / "summary.md").read_text()
    assert "## Cross-model evaluation" in summary
    assert f"in {cross['aikd_wins']} of 4 misaligned cells" in summary


def test_report_names_a_network_that_was_not_evaluated(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import aikd.tracking
    from aikd.evaluation.report import report_stage
    from aikd.evaluation.stage import evaluate_stage

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(aikd.tracking, "stage_run", lambda *a, **k: contextlib.nullcontext())
    params = {**_write_fixture(tmp_path, people=True), "cross_model": CROSS}
    for det in DETECTORS:
        mark_unavailable(embeddings_path(params, "toy", det, "m2"), "m2: no npm here")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = evaluate_stage(params)
    assert set(frames["results"]["fr_model"]) == {"r50"}
    report_stage(params)
    metrics = json.loads(Path("metrics/evaluation.json").read_text())
    assert metrics["cross_model"] == {"m2": {"evaluated": False, "reason": "m2: no npm here"}}
    summary = (Path(params["evaluate"]["reports_dir"]) / "summary.md").read_text()
    assert "**m2**: not evaluated (m2: no npm here)" in summary


def test_cross_embed_stage_embeds_real_faces_with_faceres(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lfw_root: Path,
        lfw_sample: pd.DataFrame) -> None:
    """faceres (weights from scripts/fetch_faceres.sh) on 6 LFW faces: only the configured
    splits, one 1024-D finite descriptor per face, and a pair of the same person closer than
    pairs of different people on average."""
    import mlflow

    import aikd.tracking
    from aikd.cross_model.stage import cross_embed_stage
    from aikd.models.faceres import default_faceres_weights_path

    if not default_faceres_weights_path().is_file():
        pytest.skip("faceres weights not fetched (bash scripts/fetch_faceres.sh)")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(aikd.tracking, "stage_run", lambda *a, **k: contextlib.nullcontext())
    # without the stage's run, mlflow.log_metrics would start a run of its own and leave
    # it active for every later test
    logged: list[dict] = []
    monkeypatch.setattr(mlflow, "log_metrics", logged.append)
    ref = pd.read_csv(lfw_root / "landmarks_5pt.csv")
    ref["identity"] = ref["path"].str.split("/").str[-2]
    two = ref[ref["identity"].isin(["Aaron_Eckhart", "Abdullah_Gul"])]
    two = pd.concat([two[two["identity"] == "Abdullah_Gul"].head(3),
                     two[two["identity"] == "Aaron_Eckhart"].head(1),
                     lfw_sample.head(3).assign(identity="other")], ignore_index=True)
    manifest = pd.DataFrame({"root": str(lfw_root), "path": two["path"],
                             "split": ["test"] * 6 + ["train"]})
    marks = two.assign(status="ok")
    Path("manifests").mkdir()
    Path("landmarks/reference").mkdir(parents=True)
    manifest.to_parquet("manifests/lfw.parquet")
    marks.to_parquet("landmarks/reference/lfw.parquet")
    params = {"embed": {"backbone": "dlib_resnet", "out_dir": "emb"},
              "manifest": {"out_dir": "manifests"}, "landmarks": {"out_dir": "landmarks"},
              "cross_model": {"backbones": ["faceres"], "splits": ["test"], "out_dir": "cross",
                              "batch_size": 4, "workers": 0, "threads": 1},
              "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/m.db", "experiment": "t"}}
    out = cross_embed_stage(params, "lfw", "reference", "faceres")
    meta, vecs = read_vectors(out)
    assert len(meta) == 6 and vecs.shape == (6, 1024) and np.isfinite(vecs).all()
    assert logged == [{"cross_embed.images": 6, "cross_embed.failures": 0}]
    assert mlflow.active_run() is None
    assert set(meta["path"]) == set(manifest.loc[manifest["split"] == "test", "path"])
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    order = meta["path"].tolist()
    gul = [order.index(p) for p in two["path"].head(3)]
    sim = unit @ unit.T
    mated = np.mean([sim[gul[0], gul[1]], sim[gul[0], gul[2]], sim[gul[1], gul[2]]])
    others = [i for i in range(6) if i not in gul]
    nonmated = np.mean([sim[i, j] for i in gul for j in others])
    assert mated > nonmated
