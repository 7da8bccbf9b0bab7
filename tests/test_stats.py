"""Person-level bootstrap, Holm and the sign test against hand-computed cases and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from aikd.evaluation.stats import (
    bootstrap_p_value,
    bootstrap_z_p_value,
    holm,
    pair_multiplicity,
    person_codes,
    person_resample,
    resample_weights,
    sign_test,
)


def test_person_codes_share_one_vocabulary():
    a, b, n = person_codes(["ann", "bob", "ann"], ["ann", "cid", "bob"])
    assert n == 3
    assert a.tolist() == [0, 1, 0] and b.tolist() == [0, 2, 1]


def test_pair_multiplicity_hand_case():
    # pairs: (ann, ann) mated, (bob, bob) mated, (ann, bob) and (ann, cid) non-mated
    a, b, _ = person_codes(["ann", "bob", "ann", "ann"], ["ann", "bob", "bob", "cid"])
    draws = np.array([2, 0, 1])  # ann twice, bob never, cid once
    assert pair_multiplicity(a, b, draws).tolist() == [2, 0, 0, 2]


def test_person_resample_keeps_a_persons_pairs_together():
    a, b, n = person_codes(["p1"] * 3 + ["p2"] * 2, ["p1"] * 3 + ["p2"] * 2)
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = person_resample(a, b, n, rng)
        counts = np.bincount(idx, minlength=5)
        assert len(set(counts[:3])) == 1 and len(set(counts[3:])) == 1  # all or none, equally
        assert idx.size in (0, 3 * 2, 3 + 2, 2 * 2)  # (p1,p1), (p1,p2), (p2,p2) draws


def test_holm_matches_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(holm([np.nan, 0.5])[0]) and holm([np.nan, 0.5])[1] == pytest.approx(0.5)
    assert holm([0.6, 0.7]).max() <= 1.0


def test_sign_test_against_scipy():
    for wins, n in [(10, 18), (18, 18), (0, 5), (6, 6), (7, 12)]:
        want = stats.binomtest(wins, n, 0.5, alternative="greater").pvalue
        assert sign_test(wins, n) == pytest.approx(want)


def test_bootstrap_p_value():
    assert bootstrap_p_value(np.full(99, -1.0)) == pytest.approx(2 / 100)
    assert bootstrap_p_value(np.r_[np.full(50, -1.0), np.full(50, 1.0)]) == pytest.approx(1.0)


def _holm_by_definition(p: list[float]) -> list[float]:
    """Holm from its definition: adjusted p_(i) = max over j <= i of (m - j + 1) p_(j), <= 1."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    for rank, i in enumerate(order):
        out[i] = min(1.0, max((m - r) * p[order[r]] for r in range(rank + 1)))
    return out


def test_holm_against_its_definition_on_random_pvalues():
    rng = np.random.default_rng(5)
    for m in (1, 2, 5, 13):
        p = rng.random(m) ** 3
        assert holm(p).tolist() == pytest.approx(_holm_by_definition(p.tolist()))


def test_sign_test_against_an_explicit_binomial_sum():
    import math

    for wins, n in [(0, 1), (3, 4), (9, 20), (15, 15)]:
        want = sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n
        assert sign_test(wins, n) == pytest.approx(want)
    assert np.isnan(sign_test(0, 0))
    with pytest.raises(ValueError):
        sign_test(5, 4)


def test_holm_significance_is_per_comparison_and_misaligned_only():
    import pandas as pd

    from aikd.evaluation.summary import holm_significance

    rows = []
    for det, p_b, p_c in (("dlib", 0.001, 0.001), ("mtcnn", 0.01, 0.04), ("retina", 0.02, 0.5)):
        for base, p in (("B", p_b), ("C", p_c)):
            rows.append({"fr_model": "r", "detector": det, "benchmark": "x", "method": "m",
                         "fmr": 1e-3, "threshold": "recomputed", "baseline": base,
                         "delta": -0.1 if det != "retina" else 0.1, "p_value": p})
    got = holm_significance(pd.DataFrame(rows), fmr=1e-3, threshold="recomputed",
                            reference="dlib")
    assert "dlib" not in set(got["detector"])
    b = got[got["baseline"] == "B"].set_index("detector")
    assert b["p_holm"].tolist() == pytest.approx(_holm_by_definition([0.01, 0.02]))
    assert b.loc["mtcnn", "better"] == "T" and b.loc["retina", "better"] == "B"
    c = got[got["baseline"] == "C"].set_index("detector")
    assert c["p_holm"].tolist() == pytest.approx([0.08, 0.5])
    assert (c["better"] == "-").all()


def test_resample_weights_person_and_pair():
    a, b, n = person_codes(["x", "y", "x"], ["x", "y", "y"])
    got = list(resample_weights(3, a, b, n, 3, 0))
    rng = np.random.default_rng(0)
    for w in got:
        draws = np.bincount(rng.integers(0, n, size=n), minlength=n)
        assert w.tolist() == [draws[0], draws[1], draws[0] * draws[1]]
    pairs = list(resample_weights(5, None, None, 0, 2, 1))
    assert all(w.sum() == 5 for w in pairs)


def test_bootstrap_z_p_value_against_normal_tail():
    from scipy import stats

    rng = np.random.default_rng(0)
    deltas = rng.normal(-0.05, 0.01, size=400)
    se = np.std(deltas, ddof=1)
    # a difference 5 SE from zero: far below the percentile p-value's floor of 2 / 401
    assert bootstrap_z_p_value(-0.05, deltas) == pytest.approx(2 * stats.norm.cdf(-0.05 / se))
    assert bootstrap_z_p_value(-0.05, deltas) < 1e-5 < bootstrap_p_value(deltas)
    assert bootstrap_z_p_value(0.0, deltas) == pytest.approx(1.0)
    # hand case: sd of [-1, 1] is sqrt(2), delta 1.96 * sqrt(2) -> p = 0.05
    assert bootstrap_z_p_value(1.959964 * np.sqrt(2), np.array([-1.0, 1.0])) == pytest.approx(
        0.05, abs=1e-6)
    assert np.isnan(bootstrap_z_p_value(0.1, np.array([0.1])))
    assert bootstrap_z_p_value(0.0, np.zeros(5)) == 1.0
