"""Benchmarks, comparison tables and the written report, on hand-built data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aikd.evaluation.benchmarks import (
    BENCHMARK_COLUMNS,
    lfw_pairs,
    pair_scores,
    user_pairs,
    ytf_pairs,
)
from aikd.evaluation.cells import (
    context_rows,
    evaluate_cell,
    no_quality_curve,
    paired_pauc_difference,
)
from aikd.evaluation.edc import edc_curve, pauc
from aikd.evaluation.report import write_report
from aikd.evaluation.settings import PrimaryMode
from aikd.evaluation.tables import (
    RESULT_COLUMNS,
    combined_misaligned_table,
    fnmr0_table,
    pauc_table,
    significant_differences,
    to_markdown,
    win_share,
)

LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw"

# --------------------------------------------------------------------------- benchmarks


def fake_ytf() -> pd.DataFrame:
    """A: 2 videos x 2 frames (4 cross-video pairs), B: 3 videos x 1 (3), C: one video
    of 3 frames (0), D: 2 videos x 1 (1) -> 8 mated test pairs. E is train-only."""
    rows = [
        ("A", 0, "A_00"), ("A", 0, "A_01"), ("A", 1, "A_10"), ("A", 1, "A_11"),
        ("B", 0, "B_00"), ("B", 1, "B_10"), ("B", 2, "B_20"),
        ("C", 0, "C_00"), ("C", 0, "C_01"), ("C", 0, "C_02"),
        ("D", 4, "D_40"), ("D", 5, "D_50"),
    ]
    df = pd.DataFrame(rows, columns=["identity", "video", "stem"])
    df["split"] = "test"
    train = pd.DataFrame({"identity": ["E", "E"], "video": [0, 1], "stem": ["E_00", "E_10"],
                          "split": "train"})
    df = pd.concat([df, train], ignore_index=True)
    df["path"] = "images/" + df["identity"] + "/" + df["stem"] + ".jpg"
    df["dataset"] = "ytf"
    return df.drop(columns="stem")


def unordered(pairs: pd.DataFrame) -> set[frozenset[str]]:
    return {frozenset(p) for p in zip(pairs["path_a"], pairs["path_b"], strict=True)}


def test_ytf_pairs_cross_video_balanced_unique_deterministic() -> None:
    man = fake_ytf()
    pairs = ytf_pairs(man, seed=3)
    assert list(pairs.columns) == BENCHMARK_COLUMNS
    assert (pairs["benchmark"] == "ytf").all() and (pairs["dataset"] == "ytf").all()
    mated, non = pairs[pairs["mated"]], pairs[~pairs["mated"]]
    assert len(mated) == 8 and len(non) == 8

    info = man.set_index("path")
    for a, b in zip(mated["path_a"], mated["path_b"], strict=True):
        assert info.loc[a, "identity"] == info.loc[b, "identity"]
        assert info.loc[a, "video"] != info.loc[b, "video"]
    for a, b in zip(non["path_a"], non["path_b"], strict=True):
        assert info.loc[a, "identity"] != info.loc[b, "identity"]
    used = set(pairs["path_a"]) | set(pairs["path_b"])
    assert (info.loc[list(used), "split"] == "test").all()  # E (train) never appears
    assert len(unordered(pairs)) == len(pairs)  # no duplicate, in either order

    shuffled = man.sample(frac=1.0, random_state=1).reset_index(drop=True)
    pd.testing.assert_frame_equal(ytf_pairs(shuffled, seed=3), pairs)  # row order irrelevant
    pd.testing.assert_frame_equal(ytf_pairs(man, seed=3), pairs)


def test_ytf_pairs_max_mated_and_exhaustive_nonmated() -> None:
    man = fake_ytf()
    full = ytf_pairs(man, seed=0)
    some = ytf_pairs(man, max_mated=3, seed=0)
    assert some["mated"].sum() == 3 and (~some["mated"]).sum() == 3
    assert unordered(some[some["mated"]]) <= unordered(full[full["mated"]])

    # A (4 mated) + one frame of B: only 4 non-mated pairs exist, so all are taken.
    small = man[man["path"].isin(["images/A/A_00.jpg", "images/A/A_01.jpg",
                                  "images/A/A_10.jpg", "images/A/A_11.jpg",
                                  "images/B/B_00.jpg"])]
    p = ytf_pairs(small, seed=5)
    non = p[~p["mated"]]
    assert len(non) == 4 and (non["path_b"] == "images/B/B_00.jpg").all()

    # A: 2 videos x 3 frames = 9 mated pairs, but with one frame of B only 6 non-mated exist.
    too_few = pd.DataFrame({"identity": ["A"] * 6 + ["B"], "video": [0, 0, 0, 1, 1, 1, 0],
                            "path": [f"A{i}" for i in range(6)] + ["B0"], "split": "test"})
    with pytest.raises(ValueError, match="9 non-mated pairs requested but only 6"):
        ytf_pairs(too_few)


def test_lfw_pairs_view2_counts() -> None:
    if not (LFW / "pairs.txt").is_file():
        pytest.skip(f"LFW not found at {LFW}")
    pairs = lfw_pairs(LFW)
    assert list(pairs.columns) == BENCHMARK_COLUMNS
    assert len(pairs) == 6000 and int(pairs["mated"].sum()) == 3000
    assert pairs.groupby("fold").size().eq(600).all() and pairs["fold"].nunique() == 10
    assert (pairs["benchmark"] == "lfw").all()


def test_user_pairs_names(tmp_path: Path) -> None:
    csv = tmp_path / "mine.csv"
    csv.write_text("path_a,path_b,mated\nx/1.jpg,x/2.jpg,1\nx/1.jpg,y/1.jpg,0\n")
    pairs = user_pairs(csv, "mydata")
    assert list(pairs.columns) == BENCHMARK_COLUMNS
    assert pairs["benchmark"].tolist() == ["mydata", "mydata"]
    assert pairs["mated"].tolist() == [True, False] and pairs["fold"].tolist() == [0, 0]


def test_pair_scores_drops_missing_and_computes_cosines() -> None:
    meta = pd.DataFrame({"path": ["a", "b", "c", "d"]})
    emb = np.array([[1.0, 0.0], [3.0, 4.0], [0.0, 2.0], [np.nan, 1.0]], dtype=np.float32)
    pairs = pd.DataFrame({
        "path_a": ["a", "a", "b", "a", "a", "c"],
        "path_b": ["b", "c", "c", "d", "e", "b"],
        "mated": [True, False, True, False, True, False],
    })
    kept, sim, n_dropped = pair_scores(pairs, meta, emb)
    assert n_dropped == 2  # d has a NaN vector, e has none
    assert kept["path_b"].tolist() == ["b", "c", "c", "b"]
    assert kept.index.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(sim, [0.6, 0.0, 0.8, 0.8], atol=1e-12)

    with pytest.raises(ValueError, match="twice"):
        pair_scores(pairs, pd.DataFrame({"path": ["a", "a", "b", "c"]}), emb)


# --------------------------------------------------------------------------- tables


def row(det, bench, method, variant, value, *, fmr=1e-3, thr="recomputed", low=None,
        high=None, fnmr0=0.2, n=100, fr="r50"):
    return {"fr_model": fr, "detector": det, "benchmark": bench, "method": method,
            "variant": variant, "fmr": fmr, "threshold": thr, "pauc": value,
            "pauc_low": value - 0.01 if low is None else low,
            "pauc_high": value + 0.01 if high is None else high, "fnmr0": fnmr0, "n_pairs": n}


def table_results() -> pd.DataFrame:
    rows = []
    for det, shift in (("reference", 0.0), ("mtcnn", 0.1), ("dlib", 0.2)):
        for bench, fnmr0, n in (("lfw", 0.05, 6000), ("ytf", 0.4, 7000)):
            rows += [
                row(det, bench, "none", "-", 1.0, fnmr0=fnmr0, n=n),
                row(det, bench, "random", "-", 0.99, fnmr0=fnmr0, n=n),
                row(det, bench, "sdd", "B", 0.80 + shift, fnmr0=fnmr0, n=n),
                row(det, bench, "sdd", "T", (0.70 if bench == "lfw" else 0.90) + shift,
                    fnmr0=fnmr0, n=n),
            ]
    rows.append(row("mtcnn", "lfw", "sdd", "B", 0.1, fmr=1e-2))  # other mode: ignored
    return pd.DataFrame(rows)


def test_pauc_table_and_markdown() -> None:
    res = table_results()
    t = pauc_table(res, "r50", "mtcnn")
    assert t.index.tolist() == [("none", "-"), ("random", "-"), ("sdd", "B"), ("sdd", "T")]
    assert t.columns.tolist() == ["lfw", "ytf", "mean"]
    assert t.loc[("sdd", "T"), "lfw"] == pytest.approx(0.80)
    assert t.loc[("sdd", "B"), "mean"] == pytest.approx(0.90)  # (0.9 + 0.9) / 2
    assert t.loc[("sdd", "T"), "mean"] == pytest.approx(0.90)  # (0.8 + 1.0) / 2

    foot = fnmr0_table(res, "r50", "mtcnn")
    assert foot.loc["FNMR(0)", "ytf"] == pytest.approx(0.4) and foot.loc["pairs", "lfw"] == 6000
    md = to_markdown(t, footer=foot).splitlines()
    assert md[0] == "| method | variant | lfw | ytf | mean |"
    by_row = {tuple(c.strip() for c in ln.strip("|").split("|")[:2]): ln for ln in md[2:]}
    assert "| **0.800** |" in by_row[("sdd", "T")]  # best lfw
    assert "**0.900** | **0.900** |" in by_row[("sdd", "B")]  # best ytf and tied best mean
    assert by_row[("sdd", "T")].endswith("| 1.000 | **0.900** |")
    assert "**" not in by_row[("none", "-")]
    assert by_row[("*FNMR(0)*", "")] == "| *FNMR(0)* |  | 0.050 | 0.400 |  |"
    assert "| *pairs* |  | 6000 | 7000 |  |" in md


def test_combined_misaligned_table() -> None:
    res = table_results()
    t = combined_misaligned_table(res, ["reference", "mtcnn", "dlib"], reference="reference")
    # mean over mtcnn (+0.1) and dlib (+0.2), reference left out
    assert t.loc[("sdd", "B"), "lfw"] == pytest.approx(0.95)
    assert t.loc[("sdd", "T"), "mean"] == pytest.approx((0.85 + 1.05) / 2)
    partial = res.drop(res[(res["detector"] == "dlib") & (res["method"] == "random")
                           & (res["benchmark"] == "ytf")].index)
    t2 = combined_misaligned_table(partial, reference="reference")
    assert math.isnan(t2.loc[("random", "-"), "ytf"]) and math.isnan(t2.loc[("random", "-"),
                                                                           "mean"])
    assert t2.loc[("random", "-"), "lfw"] == pytest.approx(0.99)


def test_win_share_and_significance() -> None:
    rows = [
        row("mtcnn", "lfw", "sdd", "B", 0.80), row("mtcnn", "lfw", "sdd", "T", 0.70),  # win
        row("mtcnn", "ytf", "sdd", "B", 0.80), row("mtcnn", "ytf", "sdd", "T", 0.80),  # tie
        row("dlib", "lfw", "sdd", "B", 0.60), row("dlib", "lfw", "sdd", "T", 0.90),  # loss
        row("dlib", "ytf", "sdd", "B", 0.80), row("dlib", "ytf", "sdd", "T", 0.795),  # win
        row("dlib", "ytf", "cr", "B", np.nan), row("dlib", "ytf", "cr", "T", 0.5),  # NaN
        row("reference", "lfw", "sdd", "B", 0.9), row("reference", "lfw", "sdd", "T", 0.1),
        row("mtcnn", "lfw", "sdd", "B", 0.5, thr="fixed"),
        row("mtcnn", "lfw", "sdd", "T", 0.6, thr="fixed"),
        row("mtcnn", "lfw", "random", "-", 0.2),  # context rows never count
    ]
    res = pd.DataFrame(rows)
    ws = win_share(res, reference="reference").set_index("threshold")
    assert ws.loc["recomputed", "n_cells"] == 4 and ws.loc["recomputed", "n_wins"] == 2
    assert ws.loc["recomputed", "win_share"] == pytest.approx(0.5)
    assert ws.loc["fixed", "win_share"] == 0.0
    everything = win_share(res, misaligned_only=False).set_index("threshold")
    assert everything.loc["recomputed", "n_wins"] == 3

    sig = significant_differences(res)  # intervals +-0.01: overlap only for the tiny gaps
    got = {(r.detector, r.benchmark, r.threshold): r.better for r in sig.itertuples()}
    assert got == {("mtcnn", "lfw", "recomputed"): "T", ("dlib", "lfw", "recomputed"): "B",
                   ("reference", "lfw", "recomputed"): "T", ("mtcnn", "lfw", "fixed"): "B"}

    diffs = pd.DataFrame([{"fr_model": "r50", "detector": "dlib", "benchmark": "ytf",
                           "method": "sdd", "fmr": 1e-3, "threshold": "recomputed",
                           "delta_low": -0.008, "delta_high": -0.002}])
    paired = significant_differences(res, differences=diffs)
    assert len(paired) == 1 and paired["better"].iloc[0] == "T"
    assert "paired" in paired["test"].iloc[0]

    with pytest.raises(ValueError, match="twice"):
        win_share(pd.concat([res, res.iloc[:1]]), reference="reference")
    with pytest.raises(ValueError, match="lack columns"):
        win_share(res.drop(columns="fnmr0"), reference="reference")
    with pytest.raises(ValueError, match="reference"):
        win_share(res)


# --------------------------------------------------------------------------- report


def synthetic(seed: int, n: int = 200) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Pairs where low-similarity mated pairs are the errors, and a quality that finds them."""
    rng = np.random.default_rng(seed)
    mated = np.r_[np.ones(n // 2, bool), np.zeros(n // 2, bool)]
    sim = np.where(mated, rng.normal(0.5, 0.2, n), rng.normal(0.1, 0.1, n))
    informative = np.where(mated, sim, rng.uniform(0.0, 1.0, n))
    pairs = pd.DataFrame({"path_a": [f"a{i}" for i in range(n)],
                          "path_b": [f"b{i}" for i in range(n)], "mated": mated})
    return pairs, sim, informative


def test_evaluate_cell_and_context_rows() -> None:
    pairs, sim, good = synthetic(0)
    ones = np.ones_like(good)
    rows = evaluate_cell(pairs, sim, ones, good, n_boot=0, keys={"method": "m", "variant": "T"})
    assert [(r["fmr"], r["threshold"]) for r in rows] == [
        (1e-3, "recomputed"), (1e-3, "fixed"), (1e-2, "recomputed"), (1e-2, "fixed")]
    assert rows[0]["pauc"] == pytest.approx(pauc(sim, pairs["mated"], ones, good))
    assert math.isnan(rows[0]["pauc_low"]) and rows[0]["method"] == "m"
    assert rows[0]["n_pairs"] == 200 and rows[0]["n_mated"] == 100
    fnmr0 = edc_curve(sim, pairs["mated"], ones, good, discard_rates=[0.0])["fnmr"].iloc[0]
    assert rows[0]["fnmr0"] == pytest.approx(fnmr0)

    boot = evaluate_cell(pairs, sim, ones, good, fmrs=(1e-2,), thresholds=("fixed",),
                         n_boot=30, seed=1)
    assert len(boot) == 1 and boot[0]["pauc_low"] <= boot[0]["pauc_high"]
    assert boot[0]["bootstrap"] == "pair"  # no person columns
    people = pairs.assign(person_a=[f"p{i % 20}" for i in range(200)])
    people["person_b"] = np.where(people["mated"], people["person_a"],
                                  [f"p{(i + 7) % 20}" for i in range(200)])
    got: dict = {}
    per = evaluate_cell(people, sim, ones, good, n_boot=30, seed=1, resamples=got,
                        interval_modes=[(1e-2, "fixed")])
    assert [r["bootstrap"] for r in per] == ["none", "none", "none", "person"]
    assert math.isnan(per[0]["pauc_low"]) and list(got) == [(1e-2, "fixed")]
    assert per[3]["pauc"] == boot[0]["pauc"] and got[(1e-2, "fixed")].shape == (30,)

    ctx = context_rows(pairs, sim, fmrs=(1e-3,), thresholds=("recomputed",), n_seeds=5,
                       keys={"benchmark": "b"})
    none, rnd = ctx
    assert (none["method"], none["variant"], none["pauc"]) == ("none", "-", 1.0)
    assert none["fnmr0"] == pytest.approx(fnmr0) and none["benchmark"] == "b"
    assert rnd["pauc_low"] < rnd["pauc"] < rnd["pauc_high"]
    assert rnd["pauc_std"] > 0 and rnd["bootstrap"] == "seeds"  # low/high: seed quantiles
    assert none["n_fail0"] == round(fnmr0 * 100) == rows[0]["n_fail0"]

    flat = no_quality_curve(sim, pairs["mated"], discard_rates=[0.0, 0.1, 0.3])
    assert flat["fnmr"].tolist() == pytest.approx([fnmr0] * 3)
    assert flat["n_mated"].tolist() == [100, 90, 70]


def test_paired_pauc_difference() -> None:
    pairs, sim, good = synthetic(1)
    ones = np.ones_like(good)
    res = paired_pauc_difference(sim, pairs["mated"], (ones, -good), (ones, good), n_boot=40)
    assert res["delta"] < 0 and res["delta_high"] < 0 and res["n_valid"] >= 35
    same = paired_pauc_difference(sim, pairs["mated"], (ones, good), (ones, good), n_boot=10)
    assert same["delta"] == 0.0 and same["delta_low"] == 0.0 == same["delta_high"]
    assert res["p_value"] < 0.05 and same["p_value"] == 1.0


def test_write_report_outputs_and_win_share(tmp_path: Path) -> None:
    # T gets the informative quality except in the cells marked False, where B gets it.
    t_informed = {("reference", "b1"): False, ("reference", "b2"): False,
                  ("d1", "b1"): True, ("d1", "b2"): True,
                  ("d2", "b1"): True, ("d2", "b2"): False}
    expected_share = 3 / 4  # misaligned cells (d1, d2) x (b1, b2): T wins in 3

    results, curves = [], {}
    for k, bench in enumerate(("b1", "b2")):
        pairs, sim, good = synthetic(10 + k)
        ones = np.ones_like(good)
        assert pauc(sim, pairs["mated"], ones, good) < pauc(sim, pairs["mated"], ones, -good)
        for det in ("reference", "d1", "d2"):
            keys = {"fr_model": "r50", "detector": det, "benchmark": bench, "n_dropped": k}
            results += context_rows(pairs, sim, n_seeds=3, keys=keys)
            for variant in ("B", "T"):
                q = good if (variant == "T") == t_informed[(det, bench)] else -good
                results += evaluate_cell(pairs, sim, ones, q, n_boot=10,
                                         keys={**keys, "method": "sdd", "variant": variant},
                                         interval_modes=[(1e-3, "recomputed")])
                if bench == "b1" and det != "d2":  # two figures are enough (each ~1 s)
                    curves[("r50", det, bench, "sdd", variant)] = edc_curve(
                        sim, pairs["mated"], ones, q)
        curves[("r50", "d1", bench, "none", "-")] = no_quality_curve(sim, pairs["mated"])
    res = pd.DataFrame(results)
    assert set(RESULT_COLUMNS) <= set(res.columns)

    written = write_report(res, curves, tmp_path, fr_models=["r50"],
                           detectors=["reference", "d1", "d2"],
                           primary=PrimaryMode(1e-3, "recomputed"), reference="reference")
    expected = {f"reports/pauc_r50_{d}.{ext}" for d in ("reference", "d1", "d2", "misaligned")
                for ext in ("csv", "md")}
    expected |= {"reports/edc/r50_reference_b1.png", "reports/edc/r50_d1_b1.png",
                 "reports/edc/r50_d1_b2.png"}
    expected |= {"reports/summary.md", "reports/results_long.csv", "metrics/evaluation.json",
                 "reports/benchmarks.csv", "reports/benchmarks.md"}
    assert set(written) == expected
    for rel in expected:
        assert (tmp_path / rel).is_file() and (tmp_path / rel).stat().st_size > 0
    assert (tmp_path / "reports/edc/r50_d1_b1.png").read_bytes()[:4] == b"\x89PNG"

    metrics = json.loads((tmp_path / "metrics/evaluation.json").read_text())
    assert metrics["aikd_win_share"] == pytest.approx(expected_share)
    assert (metrics["aikd_wins"], metrics["aikd_cells"]) == (3, 4)
    main = res[(res["fmr"] == 1e-3) & (res["threshold"] == "recomputed")]
    t_d2 = main[(main["method"] == "sdd") & (main["variant"] == "T") & (main["detector"] == "d2")]
    assert metrics["mean_pauc"]["sdd"]["T"]["d2"] == pytest.approx(t_d2["pauc"].mean())
    assert metrics["mean_pauc"]["none"]["-"]["d1"] == 1.0

    table = pd.read_csv(tmp_path / "reports/pauc_r50_d1.csv")
    assert set(table["metric"]) == {"pauc", "fnmr0", "n_fail0", "n_pairs", "random_low",
                                    "random_high"}
    assert set(zip(table["fmr"], table["threshold"], strict=True)) == {
        (1e-3, "recomputed"), (1e-3, "fixed"), (1e-2, "recomputed"), (1e-2, "fixed")}
    md = (tmp_path / "reports/pauc_r50_d1.md").read_text()
    assert md.index("FMR 0.001, recomputed threshold (primary)") < md.index(
        "FMR 0.01, fixed threshold (secondary")
    assert "**" in md
    assert md.count("95 % intervals") == 1  # only the primary setting has intervals
    mis = pd.read_csv(tmp_path / "reports/pauc_r50_misaligned.csv")
    assert {"n_fail0_min", "random_low_min", "random_high_max"} <= set(mis["metric"])
    summary = (tmp_path / "reports/summary.md").read_text()
    assert "T has the lower pAUC than B in 3 of 4 misaligned" in summary
    assert "primary setting" in summary and "secondary" in summary
    assert "n_dropped" in summary


def test_fast_helpers_equal_the_straightforward_ones() -> None:
    from aikd.evaluation.cells import _fnmr0, _fnmr0_sorted
    from aikd.evaluation.edc import pauc_points, random_quality_modes, random_quality_paucs

    pairs, sim, good = synthetic(3, n=300)
    mated = pairs["mated"].to_numpy()
    for fmr in (1e-3, 1e-2, 0.1, 0.5, 1.0):
        assert _fnmr0(sim, mated, fmr) == _fnmr0_sorted(sim, mated, fmr)
    ones = np.ones_like(good)
    modes = [(0.01, "recomputed"), (0.01, "fixed"), (0.1, "recomputed")]
    points = pauc_points(sim, mated, ones, good, modes)
    for f, t in modes:
        assert points[(f, t)] == pauc(sim, mated, ones, good, fmr=f, threshold=t)
    kw = {"image_a": pairs["path_a"], "image_b": pairs["path_b"]}
    many = random_quality_modes(sim, mated, modes, n_seeds=3, seed=2, **kw)
    for f, t in modes:
        one = random_quality_paucs(sim, mated, n_seeds=3, seed=2, fmr=f, threshold=t, **kw)
        np.testing.assert_array_equal(many[(f, t)], one)
