"""Training seeds through evaluate and report: per-seed rows, seed means with their spread,
and T-B / T-C paired by seed (a hand-made case whose seed-mean difference is known)."""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aikd.data.io import vectors_table
from aikd.evaluation.columns import split_column
from aikd.evaluation.seeds import seed_mean_curve, seed_spread
from aikd.evaluation.stage import column_keys, evaluate_stage
from aikd.naming import seeded_name, split_seeded_name

DETECTORS = ["dlib", "mtcnn"]
PRIMARY = (0.1, "recomputed")


def test_seeded_names_round_trip() -> None:
    for run, seed in (("sddfiqa-T", 0), ("my-fiqa-C", 12)):
        assert split_seeded_name(seeded_name(run, seed)) == (run, seed)
    assert split_seeded_name("serfiq-B") == ("serfiq-B", None)
    assert split_column("crfiqa-B@s2") == ("crfiqa", "B", 2)
    assert split_column("flip") == ("flip", "-", None)
    for bad in ("sddfiqa-T@sx", "@s1", "sddfiqa-T@s-1"):
        with pytest.raises(ValueError, match="not <run>@s<seed>"):
            split_seeded_name(bad)
    keys = column_keys(["serfiq", "serfiq-T@s0", "serfiq-T@s1", "sddfiqa-B@s1", "sharpness"])
    assert keys == {"serfiq": ("serfiq", "B", None), "serfiq-T@s0": ("serfiq", "T", 0),
                    "serfiq-T@s1": ("serfiq", "T", 1), "sddfiqa-B@s1": ("sddfiqa", "B", 1),
                    "sharpness": ("sharpness", "-", None)}


def test_seed_spread_and_mean_curve() -> None:
    assert seed_spread([0.2, 0.4, 0.9]) == pytest.approx(
        {"n_seeds": 3, "seed_sd": np.std([0.2, 0.4, 0.9], ddof=1), "seed_min": 0.2,
         "seed_max": 0.9})
    one = seed_spread([0.3])
    assert one["n_seeds"] == 1 and np.isnan(one["seed_sd"]) and one["seed_min"] == 0.3
    a = pd.DataFrame({"discard_rate": [0.0, 0.1], "fnmr": [0.2, 0.1]})
    b = pd.DataFrame({"discard_rate": [0.0, 0.1], "fnmr": [0.4, 0.3]})
    assert seed_mean_curve([a, b])["fnmr"].tolist() == pytest.approx([0.3, 0.2])
    with pytest.raises(ValueError, match="different discard rates"):
        seed_mean_curve([a, b.assign(discard_rate=[0.0, 0.2])])


def _fixture(root: Path) -> dict:
    """12 people x 6 images; sddfiqa B and T of seeds 0 and 1 where T beats B in seed 0
    and is B's exact copy in seed 1, SER-FIQ's direct column as the B of serfiq-T."""
    rng = np.random.default_rng(0)
    n_people, per = 12, 6
    person = np.repeat([f"p{i:02d}" for i in range(n_people)], per)
    paths = np.array([f"{p}/{k}.jpg" for p, k in zip(person, np.tile(np.arange(per), n_people),
                                                      strict=True)])
    rows = [(paths[i], paths[j], person[i] == person[j], person[i], person[j])
            for i in range(len(paths)) for j in range(i + 1, len(paths))
            if person[i] == person[j] or rng.random() < 0.12]
    pairs = pd.DataFrame(rows, columns=["path_a", "path_b", "mated", "person_a", "person_b"])
    pairs = pairs.assign(benchmark="tiny", dataset="toy")
    (root / "pairs").mkdir(parents=True)
    pairs.to_parquet(root / "pairs" / "tiny.parquet", index=False)
    centres = rng.normal(size=(n_people, 16))
    ident = np.repeat(np.arange(n_people), per)
    hard = rng.random(len(paths))
    for det in DETECTORS:
        noise = rng.normal(size=(len(paths), 16)) * (0.3 + 2.5 * hard[:, None])
        out = root / "embeddings" / det / "toy_r50.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        import pyarrow.parquet as pq
        pq.write_table(vectors_table(list(paths), (centres[ident] + noise).astype(np.float32)),
                       out)
        good = 1.0 - hard
        b1 = good + rng.normal(0, 0.5, len(paths))
        quality = pd.DataFrame({
            "path": paths, "status": "ok",
            "sddfiqa-B@s0": good + rng.normal(0, 0.8, len(paths)),
            "sddfiqa-T@s0": good + rng.normal(0, 0.1, len(paths)),
            "sddfiqa-B@s1": b1, "sddfiqa-T@s1": b1.copy(),   # seed 1: T ties B exactly
            "serfiq": good + rng.normal(0, 0.6, len(paths)),
            "serfiq-T@s0": good + rng.normal(0, 0.2, len(paths)),
            "serfiq-T@s1": good + rng.normal(0, 0.3, len(paths)),
            "flip": rng.random(len(paths)),
        })
        qpath = root / "quality" / "toy" / f"{det}.parquet"
        qpath.parent.mkdir(parents=True, exist_ok=True)
        quality.to_parquet(qpath, index=False)
    return {
        "seed": 0, "train_seeds": [0, 1],
        "embed": {"backbone": "r50", "out_dir": "embeddings"},
        "quality": {"out_dir": "quality"},
        "landmarks": {"training_detector": "dlib", "detectors": DETECTORS},
        "distill": {"runs": {}, "out_dir": "models"},
        "evaluate": {
            "pairs_dir": "pairs", "out_dir": "evaluation", "reports_dir": "reports/evaluation",
            "benchmarks": {"tiny": {"kind": "identities", "dataset": "toy", "split": "test"}},
            "detectors": None, "fmrs": [0.1], "thresholds": ["recomputed", "fixed"],
            "n_boot": 30, "random_seeds": 3,
            "primary": {"fmr": PRIMARY[0], "threshold": PRIMARY[1]},
        },
    }


@pytest.fixture()
def evaluated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    params = _fixture(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = evaluate_stage(params)
    return params, frames


def _primary(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[np.isclose(frame["fmr"], PRIMARY[0]) & (frame["threshold"] == PRIMARY[1])]


def test_per_seed_rows_and_seed_means(evaluated, tmp_path: Path) -> None:
    from aikd.evaluation.edc import pauc

    _, frames = evaluated
    res = frames["results"]
    assert str(res["seed"].dtype) == "Int64"
    sdd = _primary(res[(res["method"] == "sddfiqa") & (res["detector"] == "mtcnn")])
    per_seed = sdd[sdd["seed"].notna()].set_index(["variant", "seed"])["pauc"]
    assert sorted(per_seed.index) == [("B", 0), ("B", 1), ("T", 0), ("T", 1)]
    # one seed's row is that column's pAUC on the cell's pairs (computed here directly)
    pairs = pd.read_parquet(tmp_path / "pairs" / "tiny.parquet")
    table = pd.read_parquet(tmp_path / "quality" / "toy" / "mtcnn.parquet").set_index("path")
    from aikd.data.io import read_vectors
    from aikd.evaluation.benchmarks import pair_scores
    meta, vecs = read_vectors(tmp_path / "embeddings" / "mtcnn" / "toy_r50.parquet")
    scored = pair_scores(pairs, meta, vecs)
    q = table["sddfiqa-T@s0"]
    want = pauc(scored.similarity, scored.pairs["mated"].to_numpy(bool),
                scored.pairs["path_a"].map(q).to_numpy(), scored.pairs["path_b"].map(q).to_numpy(),
                fmr=PRIMARY[0], threshold=PRIMARY[1])
    assert per_seed[("T", 0)] == pytest.approx(want)
    means = sdd[sdd["seed"].isna()].set_index("variant")
    for v in ("B", "T"):
        vals = [per_seed[(v, 0)], per_seed[(v, 1)]]
        assert means.loc[v, "pauc"] == pytest.approx(np.mean(vals))
        assert means.loc[v, "seed_sd"] == pytest.approx(np.std(vals, ddof=1))
        assert means.loc[v, "n_seeds"] == 2 and means.loc[v, "pauc_low"] <= means.loc[v, "pauc"]
    # untrained rows carry no seed and no seed-mean twin
    untrained = res[res["method"].isin(["none", "random", "flip", "serfiq"])
                    & (res["variant"] != "T")]
    assert untrained["seed"].isna().all() and untrained["n_seeds"].isna().all()
    curves = frames["curves"]
    seeds = curves.loc[curves["method"] == "sddfiqa", "seed"]
    assert set(seeds.dropna().astype(int)) == {0, 1} and seeds.isna().any()  # + seed mean


def test_differences_are_paired_by_seed_and_averaged(evaluated) -> None:
    """Seed 1's T is B's copy: its T-B is exactly 0 on every resample, so the seed mean of
    T-B is half of seed 0's, its interval half of seed 0's, and its seed spread is that of
    (d0, 0)."""
    _, frames = evaluated
    d = frames["differences"]
    for det in DETECTORS:
        tb = d[(d["detector"] == det) & (d["method"] == "sddfiqa") & (d["baseline"] == "B")]
        by_seed = tb.set_index(pd.Index(["mean" if pd.isna(s) else str(s) for s in tb["seed"]]))
        assert set(by_seed.index) == {"0", "1", "mean"}
        d0 = by_seed.loc["0"]
        assert by_seed.loc["1", ["delta", "delta_low", "delta_high"]].tolist() == [0, 0, 0]
        mean = by_seed.loc["mean"]
        assert mean["delta"] == pytest.approx(d0["delta"] / 2)
        assert mean["delta_low"] == pytest.approx(d0["delta_low"] / 2)
        assert mean["delta_high"] == pytest.approx(d0["delta_high"] / 2)
        assert mean["n_seeds"] == 2
        assert mean["seed_sd"] == pytest.approx(abs(d0["delta"]) / np.sqrt(2))
        assert (mean["seed_min"], mean["seed_max"]) == pytest.approx(
            tuple(sorted((d0["delta"], 0.0))))
    # SER-FIQ: every seed of T against its one direct B; no T-C without a C
    ser = d[(d["method"] == "serfiq")]
    assert set(ser["baseline"]) == {"B"} and len(ser) == 3 * len(DETECTORS)
    assert not ((d["method"] == "sddfiqa") & (d["baseline"] == "C")).any()
    assert d["seed"].dtype.name == "Int64"


def test_report_reads_seed_means_and_says_so(evaluated, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    import aikd.tracking
    from aikd.evaluation.report import report_stage

    params, frames = evaluated
    monkeypatch.setattr(aikd.tracking, "stage_run", lambda *a, **k: contextlib.nullcontext())
    report_stage(params)
    metrics = json.loads(Path("metrics/evaluation.json").read_text())
    assert metrics["train_seeds"] == [0, 1] and metrics["n_seeds"] == 2
    assert "seed-mean of per-seed paired differences" in metrics["aggregation"]["differences"]
    # one win-share cell per misaligned (detector, benchmark, method): seed means only
    assert metrics["aikd_cells"] == 2
    d = frames["differences"]
    tb = _primary(d[(d["detector"] == "mtcnn") & d["seed"].isna() & (d["baseline"] == "B")])
    wins = int((tb["delta"] < 0).sum())
    assert metrics["aikd_wins"] == wins
    rep = Path(params["evaluate"]["reports_dir"])
    long = pd.read_csv(rep / "results_long.csv")
    assert {"B", "T"} <= set(long["variant"]) and "seed" in long.columns
    trained = long[long["variant"].isin(["B", "T"]) & (long["method"] == "sddfiqa")]
    assert set(trained["seed"].dropna().astype(int)) == {0, 1} and trained["seed"].isna().any()
    assert set(pd.read_csv(rep / "differences_long.csv")["seed"].dropna().astype(int)) == {0, 1}
    table = (rep / "pauc_r50_mtcnn.md").read_text()
    assert "Seed spread" in table and "n 2)" in table
    summary = (rep / "summary.md").read_text()
    assert "mean over 2 training seeds" in summary and "paired by seed" in summary
