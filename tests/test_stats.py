"""Person-level bootstrap, Holm and the sign test against hand-computed cases and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from aikd.evaluation.stats import (
    bootstrap_p_value,
    holm,
    pair_multiplicity,
    person_codes,
    person_resample,
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
