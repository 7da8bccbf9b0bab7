"""The evaluate and report stages end to end on tiny files: person columns, a C variant,
SER-FIQ's direct column as its B, and the keys of metrics/evaluation.json."""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aikd.data.io import vectors_table
from aikd.evaluation.stage import evaluate_stage, method_variants

DETECTORS = ["dlib", "mtcnn", "retinaface"]


def _params(root: Path, *, benchmarks: dict) -> dict:
    return {
        "seed": 0,
        "embed": {"backbone": "r50", "out_dir": "embeddings"},
        "quality": {"out_dir": "quality"},
        "landmarks": {"training_detector": "dlib", "detectors": DETECTORS},
        "evaluate": {
            "pairs_dir": "pairs",
            "out_dir": "evaluation",
            "reports_dir": "reports/evaluation",
            "benchmarks": benchmarks,
            "detectors": None,
            "fmrs": [0.01, 0.1],
            "thresholds": ["recomputed", "fixed"],
            "n_boot": 20,
            "random_seeds": 5,
            "primary": {"fmr": 0.1, "threshold": "recomputed"},
        },
    }


def _write_fixture(root: Path, *, people: bool, seed: int = 0) -> dict:
    """12 people x 6 images; mated pairs within a person, non-mated across people."""
    rng = np.random.default_rng(seed)
    n_people, per = 12, 6
    person = np.repeat([f"p{i:02d}" for i in range(n_people)], per)
    paths = np.array([f"{p}/{k}.jpg" for p, k in zip(person, np.tile(np.arange(per), n_people),
                                                      strict=True)])
    rows = []
    for i in range(len(paths)):
        for j in range(i + 1, len(paths)):
            if person[i] == person[j] or rng.random() < 0.12:
                rows.append((paths[i], paths[j], person[i] == person[j], person[i], person[j]))
    pairs = pd.DataFrame(rows, columns=["path_a", "path_b", "mated", "person_a", "person_b"])
    pairs["benchmark"] = "tiny"
    pairs["dataset"] = "toy"
    if not people:
        pairs = pairs.drop(columns=["person_a", "person_b"])
    (root / "pairs").mkdir(parents=True, exist_ok=True)
    pairs.to_parquet(root / "pairs" / "tiny.parquet", index=False)

    centres = rng.normal(size=(n_people, 16))
    ident = np.repeat(np.arange(n_people), per)
    hard = rng.random(len(paths))  # how far an image is from its person: low quality
    for det in DETECTORS:
        noise = rng.normal(size=(len(paths), 16)) * (0.3 + 2.5 * hard[:, None])
        vecs = (centres[ident] + noise).astype(np.float32)
        out = root / "embeddings" / det / "toy_r50.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        import pyarrow.parquet as pq
        pq.write_table(vectors_table(list(paths), vecs), out)
        good = 1.0 - hard
        quality = pd.DataFrame({
            "path": paths, "status": "ok",
            "sddfiqa-B": good + rng.normal(0, 0.6, len(paths)),
            "sddfiqa-C": good + rng.normal(0, 0.4, len(paths)),
            "sddfiqa-T": good + rng.normal(0, 0.2, len(paths)),
            "serfiq": good + rng.normal(0, 0.5, len(paths)),  # SER-FIQ direct = its B
            "serfiq-T": good + rng.normal(0, 0.3, len(paths)),
            "flip": rng.random(len(paths)),
        })
        qpath = root / "quality" / "toy" / f"{det}.parquet"
        qpath.parent.mkdir(parents=True, exist_ok=True)
        quality.to_parquet(qpath, index=False)
    return _params(root, benchmarks={"tiny": {"kind": "identities", "dataset": "toy",
                                              "split": "test"}})


def test_method_variants_direct_serfiq_is_b() -> None:
    cols = ["sddfiqa-B", "sddfiqa-C", "sddfiqa-T", "serfiq", "serfiq-T", "flip",
            "crfiqa-B", "crfiqa-T"]
    got = method_variants(cols)
    assert got["serfiq"] == ("serfiq", "B") and got["serfiq-T"] == ("serfiq", "T")
    assert got["sddfiqa-C"] == ("sddfiqa", "C") and got["flip"] == ("flip", "-")
    assert method_variants(["serfiq-B", "serfiq-T"])["serfiq-B"] == ("serfiq", "B")


@pytest.fixture()
def evaluated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    params = _write_fixture(tmp_path, people=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = evaluate_stage(params)
    return params, frames


def test_evaluate_stage_person_bootstrap_and_differences(evaluated) -> None:
    params, frames = evaluated
    res, diffs = frames["results"], frames["differences"]
    primary = (res["fmr"] == 0.1) & (res["threshold"] == "recomputed")
    methods = res[res["variant"] != "-"]
    assert set(methods.loc[primary, "bootstrap"]) == {"person"}
    assert set(methods.loc[~primary, "bootstrap"]) == {"none"}  # secondary: points only
    assert methods.loc[~primary, "pauc_low"].isna().all()
    assert {"n_fail0", "n_identities", "identity_disjoint"} <= set(res.columns)
    assert (res["n_identities"] == 12).all() and res["identity_disjoint"].all()
    none = res[(res["method"] == "none")]
    assert (none["n_fail0"] == (none["fnmr0"] * none["n_mated"]).round()).all()
    rnd = res[(res["method"] == "random") & primary]
    assert (rnd["pauc_low"] <= rnd["pauc"]).all() and (rnd["pauc"] <= rnd["pauc_high"]).all()
    # T-B for sddfiqa and serfiq (direct column as B), T-C for sddfiqa only
    got = set(zip(diffs["detector"], diffs["method"], diffs["baseline"], strict=True))
    want = {(d, m, b) for d in DETECTORS for m, b in
            (("sddfiqa", "B"), ("sddfiqa", "C"), ("serfiq", "B"))}
    assert got == want
    assert diffs["p_value"].between(0, 1).all() and (diffs["bootstrap"] == "person").all()
    # the paired difference's point is the difference of the two rows' pAUC
    r = res[primary & (res["detector"] == "mtcnn") & (res["method"] == "sddfiqa")]
    by_variant = r.set_index("variant")["pauc"]
    d = diffs[(diffs["detector"] == "mtcnn") & (diffs["method"] == "sddfiqa")
              & (diffs["baseline"] == "C")]
    assert d["delta"].iloc[0] == pytest.approx(by_variant["T"] - by_variant["C"])


def test_report_stage_metrics_keys(evaluated, monkeypatch: pytest.MonkeyPatch) -> None:
    import aikd.tracking
    from aikd.evaluation.report import report_stage

    params, _ = evaluated
    monkeypatch.setattr(aikd.tracking, "stage_run",
                        lambda *a, **k: contextlib.nullcontext())
    report_stage(params)
    metrics = json.loads(Path("metrics/evaluation.json").read_text())
    assert metrics["primary"] == {"fmr": 0.1, "threshold": "recomputed"}
    assert metrics["training_detector"] == "dlib"
    for key in ("aikd_win_share", "win_share_p_value", "aikd_win_share_t_vs_c",
                "win_share_p_value_t_vs_c"):
        assert key in metrics
    assert set(metrics["significant_after_holm"]) == {"T", "B"}
    assert set(metrics["significant_after_holm_t_vs_c"]) == {"T", "C"}
    # misaligned: mtcnn and retinaface x 1 benchmark x (sddfiqa, serfiq)
    assert metrics["aikd_cells"] == 4 and metrics["aikd_cells_t_vs_c"] == 2
    rep = Path(params["evaluate"]["reports_dir"])
    bench = pd.read_csv(rep / "benchmarks.csv")
    assert bench["benchmark"].tolist() == ["tiny"]
    row = bench.iloc[0]
    assert row["n_identities"] == 12 and bool(row["identity_disjoint"])
    for tag in ("1e-2", "1e-1"):
        for det in DETECTORS:
            assert f"fnmr0_{tag}_{det}" in bench.columns
            assert f"n_fail0_{tag}_{det}" in bench.columns
    summary = (rep / "summary.md").read_text()
    assert "Holm" in summary and "secondary" in summary and "training alignment: dlib" in summary
    table = (rep / "pauc_r50_mtcnn.md").read_text()
    assert "(secondary: point estimates only" in table and "failing mated pairs" in table


def test_evaluate_stage_without_people_falls_back_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = _write_fixture(tmp_path, people=False)
    params["evaluate"]["detectors"] = ["mtcnn"]
    with pytest.warns(UserWarning, match="no person_a/person_b"):
        frames = evaluate_stage(params)
    res = frames["results"]
    assert set(res.loc[res["variant"] != "-", "bootstrap"]) == {"pair", "none"}
    assert (res["n_identities"] == -1).all()
