"""The learnability floors: ridge probe (closed form, LOO-chosen penalty) and label fit."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from aikd.distill.learnability import fit_ridge, label_fit, learnability_metrics


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_label_fit_hand_case() -> None:
    l1, rho = label_fit(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.2, 0.3, 0.4, 0.5]))
    assert l1 == pytest.approx(0.1)
    assert rho == pytest.approx(1.0)
    assert label_fit(np.array([4.0, 3, 2, 1]), np.array([1.0, 2, 3, 4]))[1] == pytest.approx(-1)
    l1, rho = label_fit(np.full(3, 0.5), np.array([0.0, 0.5, 1.0]))
    assert l1 == pytest.approx(1 / 3) and math.isnan(rho)


def test_ridge_matches_normal_equations_and_brute_force_loo() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    y = x @ rng.normal(size=6) + 0.3 * rng.normal(size=40)
    w, b, alpha = fit_ridge(x, y, alphas=(0.01, 1.0, 100.0))
    xu = _unit(x)
    xc = xu - xu.mean(0)
    w_ref = np.linalg.solve(xc.T @ xc + alpha * np.eye(6), xc.T @ (y - y.mean()))
    np.testing.assert_allclose(w, w_ref, rtol=1e-8, atol=1e-10)
    assert b == pytest.approx(y.mean() - xu.mean(0) @ w_ref)

    def loo(a: float) -> float:  # refit without each row (centring included)
        errs = []
        for i in range(40):
            keep = np.arange(40) != i
            wi, bi, _ = fit_ridge(x[keep], y[keep], alphas=(a,))
            errs.append((xu[i] @ wi + bi - y[i]) ** 2)
        return float(np.mean(errs))

    # The chosen alpha has the smallest brute-force LOO error of the grid (the closed form
    # matches refitting up to the intercept's 1/n leverage approximation).
    scores = {a: loo(a) for a in (0.01, 1.0, 100.0)}
    assert alpha == min(scores, key=scores.get)


def test_learnability_ridge_learns_a_linear_label_and_constant_is_a_floor() -> None:
    rng = np.random.default_rng(1)
    e_train, e_val = rng.normal(size=(300, 16)), rng.normal(size=(100, 16))
    direction = rng.normal(size=16)
    t_train = _unit(e_train) @ direction
    t_val = _unit(e_val) @ direction
    noisy_student = t_val + rng.normal(scale=2.0, size=100)
    m = learnability_metrics(noisy_student, t_val, t_train, e_train, e_val)
    assert m["ridge_val_spearman"] > 0.95
    assert m["ridge_val_spearman"] > m["val_spearman"]
    assert m["const_val_l1"] == pytest.approx(np.mean(np.abs(t_val - np.median(t_train))))
    assert "ridge_val_l1" in m and "ridge_alpha" in m
    assert "ridge_val_spearman" not in learnability_metrics(noisy_student, t_val, t_train)


def test_learnability_table_reads_each_runs_metrics(tmp_path) -> None:
    import json

    from aikd.distill.learnability import learnability_table, write_learnability

    figures = {"val_spearman": 0.6, "ridge_val_spearman": 0.4, "val_l1": 0.15,
               "ridge_val_l1": 0.18, "const_val_l1": 0.25}
    (tmp_path / "crfiqa-T").mkdir()
    (tmp_path / "crfiqa-T" / "metrics.json").write_text(json.dumps({"metrics": figures}))
    runs = {"crfiqa-T": {"labels": "crfiqa", "variant": "T"},
            "crfiqa-B": {"labels": "crfiqa", "variant": "B"}}  # not trained: left out
    table = learnability_table(runs, tmp_path)
    assert table["run"].tolist() == ["crfiqa-T"]
    assert table.iloc[0]["val_spearman"] == 0.6 and bool(table.iloc[0]["beats_ridge"])
    csv, _, md = write_learnability(table, tmp_path / "out")
    assert "ridge" in md.read_text() and csv.read_text().startswith("run,seed,labels,variant")


def test_learnability_per_seed_and_its_mean_and_sd_over_seeds(tmp_path) -> None:
    """With training seeds, one row per (run, seed) from models/<run>/seed<k>/, and the
    summary's mean and SD over seeds are those of the seeds' figures."""
    import json

    from aikd.distill.learnability import learnability_table, write_learnability

    for seed, rho in ((0, 0.5), (1, 0.7)):
        folder = tmp_path / "sddfiqa-T" / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"metrics": {
            "val_spearman": rho, "ridge_val_spearman": 0.6, "val_l1": 0.1,
            "ridge_val_l1": 0.2, "const_val_l1": 0.3}}))
    runs = {"sddfiqa-T": {"labels": "sddfiqa", "variant": "T"}}
    table = learnability_table(runs, tmp_path, seeds=[0, 1, 2])  # seed 2: not trained
    assert table["seed"].tolist() == [0, 1]
    assert table["beats_ridge"].tolist() == [False, True]
    _, means, md = write_learnability(table, tmp_path / "out")
    row = pd.read_csv(means).iloc[0]
    assert row["n_seeds"] == 2 and row["val_spearman"] == pytest.approx(0.6)
    assert row["val_spearman_sd"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert row["beats_ridge"] == pytest.approx(0.5)
    assert "0.600 ± 0.141" in md.read_text()
