"""EDC / pAUC tests with expectations built by hand or by a plain brute-force reference."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from aikd.evaluation.edc import (
    UndefinedPAUCWarning,
    edc_curve,
    pauc,
    pauc_bootstrap,
    random_quality_pauc,
)
from aikd.evaluation.plots import plot_edc

COLUMNS = ["discard_rate", "fnmr", "threshold", "n_mated", "n_nonmated"]


# --------------------------------------------------------------------------- reference


def reference_edc(sim, mated, qa, qb, fmr, rates, mode):
    """Spec written as plainly as possible: Python lists, a fresh sort at every rate."""
    n = len(sim)
    q = [min(a, b) for a, b in zip(qa, qb, strict=True)]
    order = sorted(range(n), key=lambda i: q[i])  # Python's sort is stable

    def threshold(nonmated):
        s = sorted(nonmated, reverse=True)
        m = math.floor(fmr * len(s) + 1e-9)
        return s[m] if m < len(s) else -math.inf

    tau0 = threshold([sim[i] for i in range(n) if not mated[i]])
    rows = []
    for r in rates:
        k = math.floor(r * n + 1e-9)
        kept = order[k:]
        nm = [sim[i] for i in kept if not mated[i]]
        mt = [sim[i] for i in kept if mated[i]]
        tau = threshold(nm) if mode == "recomputed" else tau0
        fnmr = sum(s <= tau for s in mt) / len(mt) if mt else math.nan
        rows.append((r, fnmr, tau, len(mt), len(nm)))
    return pd.DataFrame(rows, columns=COLUMNS)


def tiny_informative():
    """10 pairs; the two failing mated pairs have the lowest quality (via quality_b)."""
    # index:        0     1     2     3     4     5     6     7     8     9
    sim = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1, 0.2, 0.3, 0.4, 0.5])
    mated = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    qa = np.array([0.9, 0.9, 0.9, 0.9, 0.05, 0.3, 0.9, 0.9, 0.9, 0.9])
    qb = np.array([0.8, 0.7, 0.6, 0.1, 0.9, 0.9, 0.5, 0.4, 0.95, 0.99])
    # pair quality = min -> order: 4 (0.05), 3 (0.1), 5 (0.3), 7 (0.4), ...
    return sim, mated, qa, qb


# --------------------------------------------------------------------------- hand-built


def test_informative_quality_tiny_hand_value():
    sim, mated, qa, qb = tiny_informative()
    # fmr=0.1, 5 non-mated: m = floor(0.5) = 0 -> tau = 0.5 (max non-mated) at every rate
    # (discarding pair 5, sim 0.1, leaves 4 non-mated, m = 0, tau still 0.5).
    # k = 0: mated fail {0.3, 0.2} -> 2/5; k = 1 drops pair 4 -> 1/4; k = 2 drops pair 3 -> 0/3;
    # k = 3 drops non-mated pair 5 -> 0/3.
    curve = edc_curve(sim, mated, qa, qb, fmr=0.1, discard_rates=[0.0, 0.1, 0.2, 0.3])
    assert list(curve.columns) == COLUMNS
    np.testing.assert_allclose(curve["fnmr"], [0.4, 0.25, 0.0, 0.0])
    np.testing.assert_allclose(curve["threshold"], [0.5] * 4)
    assert curve["n_mated"].tolist() == [5, 4, 3, 3]
    assert curve["n_nonmated"].tolist() == [5, 5, 5, 4]
    # trapezoid: 0.1 * (0.4/2 + 0.25 + 0 + 0/2) = 0.045; / (0.3 * 0.4) = 0.375
    value = pauc(sim, mated, qa, qb, fmr=0.1, max_discard=0.3, step=0.1)
    assert value == pytest.approx(0.375, abs=1e-12)


def test_informative_quality_drives_fnmr_to_zero():
    rng = np.random.default_rng(1)
    n = 2000
    mated = np.arange(n) % 2 == 0
    sim = np.where(mated, rng.uniform(0.6, 1.0, n), rng.uniform(0.0, 0.5, n))
    failing = mated & (np.arange(n) % 10 == 0)  # 200 failing mated pairs (10% of N)
    sim[failing] = rng.uniform(0.0, 0.4, failing.sum())
    quality = np.where(failing, rng.uniform(0.0, 0.1, n), rng.uniform(0.2, 1.0, n))
    curve = edc_curve(sim, mated, quality, quality, fmr=1e-3)
    rates = curve["discard_rate"].to_numpy()
    assert curve["fnmr"].iloc[0] > 0.15
    assert (curve.loc[rates >= 0.1, "fnmr"] == 0.0).all()
    assert (np.diff(curve.loc[rates <= 0.1, "fnmr"]) <= 0).all()
    assert pauc(sim, mated, quality, quality, fmr=1e-3) < 0.25


def test_uninformative_quality_keeps_pauc_near_one():
    rng = np.random.default_rng(2)
    n = 20000
    mated = rng.random(n) < 0.5
    sim = np.where(mated, rng.normal(0.6, 0.15, n), rng.normal(0.1, 0.1, n))
    qa, qb = rng.random(n), rng.random(n)
    fnmr0 = edc_curve(sim, mated, qa, qb, fmr=1e-2, discard_rates=[0.0])["fnmr"].iloc[0]
    assert 0.02 < fnmr0 < 0.5  # enough errors for the ratio to be meaningful
    for mode in ("recomputed", "fixed"):
        value = pauc(sim, mated, qa, qb, fmr=1e-2, threshold=mode)
        assert value == pytest.approx(1.0, abs=0.08), mode
    mean, sd = random_quality_pauc(sim, mated, n_seeds=5, fmr=1e-2)
    assert mean == pytest.approx(1.0, abs=0.05)
    assert 0.0 < sd < 0.1


def test_fixed_vs_recomputed_threshold_when_top_impostor_is_discarded():
    # pairs 0-3 non-mated, 4-7 mated; the top impostor (0.9) has the lowest quality and the
    # failing genuine pair (0.35) the second lowest.
    sim = np.array([0.9, 0.4, 0.3, 0.2, 0.8, 0.6, 0.35, 0.5])
    mated = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=bool)
    q = np.array([0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.1, 0.95])
    rates = [0.0, 0.125, 0.25]  # k = 0, 1, 2
    # fmr = 0.2: m = floor(0.8) = 0 at n = 4, floor(0.6) = 0 at n = 3.
    rec = edc_curve(sim, mated, q, q, fmr=0.2, discard_rates=rates, threshold="recomputed")
    fix = edc_curve(sim, mated, q, q, fmr=0.2, discard_rates=rates, threshold="fixed")
    # recomputed: tau = 0.9 -> 4/4; drop impostor 0.9 -> tau = 0.4 -> {0.35} fails -> 1/4;
    # drop genuine 0.35 -> 0/3.
    np.testing.assert_allclose(rec["threshold"], [0.9, 0.4, 0.4])
    np.testing.assert_allclose(rec["fnmr"], [1.0, 0.25, 0.0])
    # fixed: tau stays 0.9 -> every genuine pair fails at every rate.
    np.testing.assert_allclose(fix["threshold"], [0.9, 0.9, 0.9])
    np.testing.assert_allclose(fix["fnmr"], [1.0, 1.0, 1.0])
    # pAUC: 0.125 * (1/2 + 0.25 + 0/2) / (0.25 * 1) = 0.375 vs a flat curve = 1.
    kw = {"fmr": 0.2, "max_discard": 0.25, "step": 0.125}
    assert pauc(sim, mated, q, q, threshold="recomputed", **kw) == pytest.approx(0.375)
    assert pauc(sim, mated, q, q, threshold="fixed", **kw) == pytest.approx(1.0)


def test_ties_keep_input_order():
    # 40 pairs, all the same quality: 10 failing genuine, 10 passing genuine, 20 impostors.
    # fmr = 0.01 -> m = 0 -> tau = max impostor = 0.5. Discarding k = 10 must drop exactly
    # the first 10 pairs of the input; any other tie order changes FNMR or n_nonmated.
    fail = np.zeros(10)
    ok = np.ones(10)
    impostor = np.linspace(0.1, 0.5, 20)
    sim = np.concatenate([fail, ok, impostor])
    mated = np.concatenate([np.ones(20, bool), np.zeros(20, bool)])
    q = np.full(40, 0.5)
    curve = edc_curve(sim, mated, q, q, fmr=0.01, discard_rates=[0.0, 0.25])
    np.testing.assert_allclose(curve["fnmr"], [0.5, 0.0])
    assert curve["n_nonmated"].tolist() == [20, 20]
    # Same pairs with the genuine blocks swapped in the input: now the passing ones go first.
    sim_swapped = np.concatenate([ok, fail, impostor])
    swapped = edc_curve(sim_swapped, mated, q, q, fmr=0.01, discard_rates=[0.0, 0.25])
    np.testing.assert_allclose(swapped["fnmr"], [0.5, 1.0])


def test_pair_quality_is_the_minimum_of_both_images():
    sim, mated, qa, qb = tiny_informative()
    a = edc_curve(sim, mated, qa, qb, fmr=0.1)
    b = edc_curve(sim, mated, qb, qa, fmr=0.1)
    c = edc_curve(sim, mated, np.minimum(qa, qb), np.full(10, np.inf), fmr=0.1)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, c)


@pytest.mark.parametrize(("rate", "k"), [(0.07, 7), (0.29, 29), (0.57, 57), (0.3, 30)])
def test_discard_count_is_floor_with_epsilon(rate, k):
    if rate in (0.29, 0.57):
        assert math.floor(rate * 100) == k - 1  # binary rounding the epsilon must absorb
    rng = np.random.default_rng(3)
    mated = np.arange(100) % 3 == 0
    sim = rng.random(100)
    q = rng.random(100)
    row = edc_curve(sim, mated, q, q, fmr=0.1, discard_rates=[rate]).iloc[0]
    assert row["n_mated"] + row["n_nonmated"] == 100 - k
    # and the pairs dropped are exactly the k lowest-quality ones
    kept = np.argsort(q, kind="stable")[k:]
    assert row["n_mated"] == mated[kept].sum()


def test_threshold_index_rule():
    sim = np.concatenate([np.arange(10.0), [100.0]])  # impostors 0..9, one genuine pair
    mated = np.array([False] * 10 + [True])
    q = np.ones(11)
    for fmr, tau in [(0.0, 9.0), (0.05, 9.0), (0.1, 8.0), (0.3, 6.0), (0.7, 2.0), (0.95, 0.0)]:
        got = edc_curve(sim, mated, q, q, fmr=fmr, discard_rates=[0.0])["threshold"].iloc[0]
        assert got == tau, fmr


def test_threshold_is_minus_inf_when_m_reaches_n():
    sim = np.array([0.1, 0.2, 0.9, 0.05])
    mated = np.array([False, False, True, True])
    q = np.array([0.0, 0.1, 0.9, 0.8])
    # fmr = 1: m = n -> tau = -inf, every comparison matches, FNMR = 0.
    curve = edc_curve(sim, mated, q, q, fmr=1.0, discard_rates=[0.0])
    assert curve["threshold"].iloc[0] == -np.inf
    assert curve["fnmr"].iloc[0] == 0.0
    # Recomputed with every impostor discarded: n = 0, m = 0 >= n -> tau = -inf.
    rec = edc_curve(sim, mated, q, q, fmr=0.1, discard_rates=[0.0, 0.5])
    assert rec["threshold"].tolist() == [0.2, -np.inf]
    assert rec["n_nonmated"].tolist() == [2, 0]
    np.testing.assert_allclose(rec["fnmr"], [0.5, 0.0])
    fix = edc_curve(sim, mated, q, q, fmr=0.1, discard_rates=[0.0, 0.5], threshold="fixed")
    assert fix["threshold"].tolist() == [0.2, 0.2]
    np.testing.assert_allclose(fix["fnmr"], [0.5, 0.5])


def test_default_grid():
    sim, mated, qa, qb = tiny_informative()
    curve = edc_curve(sim, mated, qa, qb)
    assert len(curve) == 31
    np.testing.assert_allclose(curve["discard_rate"], np.linspace(0.0, 0.3, 31))


# --------------------------------------------------------------------------- errors / NaN


def _valid():
    sim, mated, qa, qb = tiny_informative()
    return sim.copy(), mated.copy(), qa.copy(), qb.copy()


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("length", "length mismatch"),
        ("no_mated", "no mated pair"),
        ("no_nonmated", "no non-mated pair"),
        ("nan_quality_a", "quality contains NaN"),
        ("nan_quality_b", "quality contains NaN"),
        ("nan_similarity", "similarity contains NaN"),
        ("mode", "unknown threshold mode"),
        ("rate_negative", "discard rate outside"),
        ("rate_one", "discard rate outside"),
        ("fmr", "fmr must be in"),
        ("mated_values", "mated must be boolean"),
    ],
)
def test_bad_input_raises(case, match):
    sim, mated, qa, qb = _valid()
    kw = {}
    if case == "length":
        qb = qb[:-1]
    elif case == "no_mated":
        mated[:] = False
    elif case == "no_nonmated":
        mated[:] = True
    elif case == "nan_quality_a":
        qa[3] = np.nan
    elif case == "nan_quality_b":
        qb[0] = np.nan
    elif case == "nan_similarity":
        sim[7] = np.nan
    elif case == "mode":
        kw["threshold"] = "adaptive"
    elif case == "rate_negative":
        kw["discard_rates"] = [0.0, -0.01]
    elif case == "rate_one":
        kw["discard_rates"] = [0.0, 1.0]
    elif case == "fmr":
        kw["fmr"] = 1.5
    elif case == "mated_values":
        mated = np.where(mated, 2, 0)
    with pytest.raises(ValueError, match=match):
        edc_curve(sim, mated, qa, qb, **kw)
    if "discard_rates" not in kw:
        with pytest.raises(ValueError, match=match):
            pauc(sim, mated, qa, qb, **kw)


@pytest.mark.parametrize(
    "kw",
    [{"max_discard": 1.0}, {"max_discard": 0.0}, {"step": 0.0}, {"threshold": "nope"}],
)
def test_bad_pauc_settings_raise(kw):
    with pytest.raises(ValueError):
        pauc(*_valid(), **kw)


def test_pauc_nan_and_warning_when_fnmr0_is_zero():
    sim = np.array([0.9, 0.8, 0.95, 0.1, 0.2, 0.3])
    mated = np.array([True, True, True, False, False, False])
    q = np.linspace(0.0, 1.0, 6)
    with pytest.warns(UserWarning, match="FNMR at zero discard is 0"):
        value = pauc(sim, mated, q, q, fmr=0.1)
    assert math.isnan(value)
    assert issubclass(UndefinedPAUCWarning, RuntimeWarning)


def test_pauc_nan_and_warning_when_no_mated_pair_remains():
    sim = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    mated = np.array([True, True] + [False] * 8)
    q = np.arange(10.0)  # both genuine pairs are the two lowest-quality pairs
    curve = edc_curve(sim, mated, q, q, fmr=0.1, discard_rates=[0.0, 0.2])
    assert curve["n_mated"].tolist() == [2, 0]
    assert math.isnan(curve["fnmr"].iloc[1])
    with pytest.warns(UserWarning, match="no mated pair remains"):
        assert math.isnan(pauc(sim, mated, q, q, fmr=0.1))


# --------------------------------------------------------------------------- vs reference


@pytest.mark.parametrize("mode", ["recomputed", "fixed"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_reference(mode, seed):
    rng = np.random.default_rng(10 + seed)
    n = int(rng.integers(50, 400))
    mated = rng.random(n) < rng.uniform(0.1, 0.6)
    mated[0], mated[1] = True, False
    # coarse rounding creates ties in quality and similarity on purpose
    sim = np.round(np.where(mated, rng.normal(0.5, 0.25, n), rng.normal(0.0, 0.25, n)), 2)
    qa = np.round(rng.random(n), 1)
    qb = np.round(rng.random(n), 1)
    grids = [
        None,
        np.sort(rng.uniform(0.0, 0.95, 25)),
        np.array([0.0, 0.5, 0.9, 0.99]),
    ]
    for fmr in (0.0, 1e-3, 0.01, 0.1, 0.5, 1.0):
        for rates in grids:
            got = edc_curve(sim, mated, qa, qb, fmr=fmr, discard_rates=rates, threshold=mode)
            grid = np.arange(31) / 100 if rates is None else rates
            want = reference_edc(
                sim.tolist(), mated.tolist(), qa.tolist(), qb.tolist(), fmr, grid, mode
            )
            pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_pauc_matches_reference_trapezoid():
    rng = np.random.default_rng(4)
    n = 300
    mated = rng.random(n) < 0.4
    sim = np.where(mated, rng.normal(0.5, 0.3, n), rng.normal(0.0, 0.2, n))
    qa, qb = rng.random(n), rng.random(n)
    qa[mated & (sim < 0.3)] *= 0.3  # somewhat informative
    for mode in ("recomputed", "fixed"):
        grid = [i * 0.02 for i in range(11)]
        ref = reference_edc(
            sim.tolist(), mated.tolist(), qa.tolist(), qb.tolist(), 0.01, grid, mode
        )["fnmr"].tolist()
        area = sum((ref[i] + ref[i + 1]) / 2 * 0.02 for i in range(10))
        want = area / (0.2 * ref[0])
        got = pauc(sim, mated, qa, qb, fmr=0.01, max_discard=0.2, step=0.02, threshold=mode)
        assert got == pytest.approx(want, rel=1e-12)
        assert got < 1.0


# --------------------------------------------------------------------------- bootstrap etc.


def _bootstrap_data(n=600, informative=True, seed=5):
    rng = np.random.default_rng(seed)
    mated = rng.random(n) < 0.5
    sim = np.where(mated, rng.normal(0.6, 0.2, n), rng.normal(0.1, 0.1, n))
    q = rng.random(n)
    if informative:
        q = np.where(mated & (sim < 0.4), q * 0.2, q)
    return sim, mated, q, q


def test_pauc_bootstrap_interval():
    data = _bootstrap_data()
    out = pauc_bootstrap(*data, n_boot=200, seed=0, fmr=0.01)
    assert set(out) == {"pauc", "low", "high", "std"}
    assert out["pauc"] == pytest.approx(pauc(*data, fmr=0.01))
    assert out["low"] <= out["pauc"] <= out["high"]
    assert out["high"] < 1.0  # informative quality: the whole interval is below 1
    assert 0.0 < out["std"] < 0.2
    assert pauc_bootstrap(*data, n_boot=200, seed=0, fmr=0.01) == out  # seeded
    assert pauc_bootstrap(*data, n_boot=200, seed=1, fmr=0.01) != out
    narrow = pauc_bootstrap(*data, n_boot=200, seed=0, ci=0.5, fmr=0.01)
    assert out["low"] <= narrow["low"] <= narrow["high"] <= out["high"]


def test_pauc_bootstrap_rejects_bad_settings():
    data = _bootstrap_data(n=100)
    with pytest.raises(ValueError, match="unknown pauc arguments"):
        pauc_bootstrap(*data, n_boot=5, max_discrad=0.2)
    with pytest.raises(ValueError, match="ci must be"):
        pauc_bootstrap(*data, n_boot=5, ci=1.0)
    with pytest.raises(ValueError, match="n_boot"):
        pauc_bootstrap(*data, n_boot=0)


def test_random_quality_pauc_is_seeded():
    sim, mated, _, _ = _bootstrap_data(informative=False)
    a = random_quality_pauc(sim, mated, n_seeds=4, seed=3, fmr=0.01)
    b = random_quality_pauc(sim, mated, n_seeds=4, seed=3, fmr=0.01)
    assert a == b
    assert a[0] == pytest.approx(1.0, abs=0.25)
    assert random_quality_pauc(sim, mated, n_seeds=1, fmr=0.01)[1] == 0.0


def test_random_quality_pauc_warns_once_when_undefined():
    sim = np.array([0.9, 0.8, 0.95, 0.1, 0.2, 0.3])
    mated = np.array([True, True, True, False, False, False])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mean, sd = random_quality_pauc(sim, mated, n_seeds=5, fmr=0.1)
    assert math.isnan(mean) and math.isnan(sd)
    assert len([w for w in caught if issubclass(w.category, UndefinedPAUCWarning)]) == 1


def test_plot_edc_writes_png(tmp_path):
    sim, mated, qa, qb = tiny_informative()
    curves = {
        "informative": edc_curve(sim, mated, qa, qb, fmr=0.1),
        "fixed": edc_curve(sim, mated, qa, qb, fmr=0.1, threshold="fixed"),
    }
    out = plot_edc(curves, tmp_path / "sub" / "edc.png", "tiny", 0.1, paucs={"informative": 0.375})
    assert out == tmp_path / "sub" / "edc.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- resampling


def _expanded_pauc(sim, mated, qa, qb, w, **kw):
    """The straightforward path: pAUC on the explicitly repeated pairs."""
    idx = np.repeat(np.arange(sim.shape[0]), w)
    return pauc(sim[idx], mated[idx], qa[idx], qb[idx], **kw)


@pytest.mark.parametrize("mode", ["recomputed", "fixed"])
@pytest.mark.parametrize("ties", [False, True])
def test_resample_fast_path_equals_expanded_pairs(mode, ties):
    from aikd.evaluation.edc import pauc_resamples

    rng = np.random.default_rng(7)
    n = 400
    mated = rng.random(n) < 0.3
    sim = np.where(mated, rng.normal(0.6, 0.2, n), rng.normal(0.1, 0.15, n))
    qa, qb = rng.random(n), rng.random(n)
    if ties:  # coarse values: ties in quality and in similarity
        sim, qa, qb = np.round(sim, 1), np.round(qa, 1), np.round(qb, 1)
    weights = [rng.integers(0, 4, n) for _ in range(15)] + [np.ones(n, int)]
    for fmr in (0.01, 0.1):
        got = pauc_resamples(sim, mated, qa, qb, weights, fmr=fmr, threshold=mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedPAUCWarning)
            want = [_expanded_pauc(sim, mated, qa, qb, w, fmr=fmr, threshold=mode)
                    for w in weights]
        np.testing.assert_array_equal(got, np.asarray(want))  # exactly, not approximately
        # and the EDC itself, rate by rate
        from aikd.evaluation.edc import _edc_arrays, _Expander
        q = np.minimum(qa, qb)
        exp = _Expander(sim, mated, q)
        for w in weights[:5]:
            idx = np.repeat(np.arange(n), w)
            fast = exp.edc(w, np.arange(31) / 100.0, fmr, mode)
            slow = _edc_arrays(sim[idx], mated[idx], q[idx], np.arange(31) / 100.0, fmr, mode)
            for f, s in zip(fast, slow, strict=True):
                np.testing.assert_array_equal(f, s)


def test_person_bootstrap_hand_case():
    """3 people, draws (2, 0, 1): which pairs enter the resample, and how often."""
    from aikd.evaluation.edc import pauc_resamples
    from aikd.evaluation.stats import pair_multiplicity, person_codes

    person_a = ["ann", "ann", "bob", "cid", "ann", "ann", "bob", "cid", "ann", "cid"]
    person_b = ["ann", "ann", "bob", "cid", "bob", "cid", "cid", "ann", "cid", "cid"]
    mated = np.array([a == b for a, b in zip(person_a, person_b, strict=True)])
    ca, cb, n_people = person_codes(person_a, person_b)
    assert n_people == 3
    w = pair_multiplicity(ca, cb, np.array([2, 0, 1]))
    # mated ann x2, bob x0, cid x1; non-mated ann-bob 0, ann-cid 2*1, bob-cid 0
    assert w.tolist() == [2, 2, 0, 1, 0, 2, 0, 2, 2, 1]
    sim = np.array([0.9, 0.2, 0.8, 0.3, 0.5, 0.1, 0.4, 0.35, 0.25, 0.7])
    q = np.array([0.5, 0.1, 0.9, 0.2, 0.3, 0.6, 0.7, 0.8, 0.4, 0.05])
    kw = {"fmr": 0.2, "max_discard": 0.3, "step": 0.1}
    got = pauc_resamples(sim, mated, q, q, [w], **kw)[0]
    expanded = np.array([0, 0, 1, 1, 3, 5, 5, 7, 7, 8, 8, 9])
    assert np.repeat(np.arange(10), w).tolist() == expanded.tolist()
    assert got == pauc(sim[expanded], mated[expanded], q[expanded], q[expanded], **kw)


def test_person_bootstrap_is_wider_than_pair_bootstrap_when_people_cluster():
    rng = np.random.default_rng(3)
    n_people, per = 40, 30
    person = np.repeat(np.arange(n_people), per)
    effect = rng.normal(0, 0.15, n_people)  # a person-level shift shared by their pairs
    mated = np.tile(np.r_[np.ones(10, bool), np.zeros(per - 10, bool)], n_people)
    other = (person + 1 + rng.integers(0, n_people - 1, person.size)) % n_people
    person_b = np.where(mated, person, other)
    sim = np.where(mated, 0.5 + effect[person] + rng.normal(0, 0.1, person.size),
                   rng.normal(0.1, 0.1, person.size))
    q = rng.random(person.size)
    from aikd.evaluation.cells import bootstrap_weights

    pair = pauc_bootstrap(sim, mated, q, q, n_boot=100, fmr=0.05)
    weights = bootstrap_weights(person.size, n_boot=100, seed=0, person_a=person,
                                person_b=person_b)
    people = pauc_bootstrap(sim, mated, q, q, weights=weights, fmr=0.05)
    assert people["pauc"] == pair["pauc"]
    assert people["low"] <= people["pauc"] <= people["high"]
    # people share a similarity shift, so resampling them spreads wider than pairs
    assert people["std"] > pair["std"]


def test_random_quality_is_drawn_per_image():
    from aikd.evaluation.edc import random_quality_paucs

    # Pairs 0 and 1 share image "x": with per-image draws their quality is tied to it.
    rng = np.random.default_rng(0)
    n = 300
    mated = rng.random(n) < 0.4
    sim = np.where(mated, rng.normal(0.6, 0.2, n), rng.normal(0.1, 0.15, n))
    img_a = np.array([f"i{k}" for k in range(n)])
    img_b = np.array([f"j{k % 50}" for k in range(n)])  # 50 images shared by 6 pairs each
    a = random_quality_paucs(sim, mated, n_seeds=3, seed=1, fmr=0.05, image_a=img_a,
                             image_b=img_b)
    b = random_quality_paucs(sim, mated, n_seeds=3, seed=1, fmr=0.05, image_a=img_a,
                             image_b=img_b)
    np.testing.assert_array_equal(a, b)
    # the draw itself: replay the generator, pairs sharing an image see one value
    from aikd.evaluation.stats import person_codes
    ca, cb, n_img = person_codes(img_a, img_b)
    u = np.random.default_rng(1).random(n_img)
    qa, qb = u[ca], u[cb]
    assert qb[0] == qb[50] == qb[100]  # j0 in pairs 0, 50, 100
    assert a[0] == pauc(sim, mated, qa, qb, fmr=0.05)
