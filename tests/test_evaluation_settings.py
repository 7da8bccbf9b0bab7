"""The typed ``evaluate`` settings and the one line that replaces the undefined-pAUC warnings."""

from __future__ import annotations

import math
import warnings

import pandas as pd
import pytest

from aikd.errors import UsageError
from aikd.evaluation.settings import PrimaryMode, evaluate_settings
from aikd.evaluation.stage import undefined_pauc_note

EVALUATE = {"pairs_dir": "data/pairs", "out_dir": "data/evaluation",
            "reports_dir": "reports/evaluation",
            "benchmarks": {"lfw": {"kind": "lfw", "dataset": "lfw"}},
            "detectors": None, "fmrs": [0.001, 0.01], "thresholds": ["recomputed", "fixed"],
            "n_boot": 200, "random_seeds": 20,
            "primary": {"fmr": 0.001, "threshold": "recomputed"}}


def _params(**evaluate: object) -> dict:
    return {"evaluate": {**EVALUATE, **evaluate},
            "landmarks": {"detectors": ["reference", "mtcnn"]}}


def test_settings_from_params() -> None:
    s = evaluate_settings(_params())
    assert s.primary == PrimaryMode(1e-3, "recomputed")
    assert s.fmrs == [1e-3, 1e-2] and s.n_boot == 200
    assert s.detectors_of(_params()) == ["reference", "mtcnn"]
    assert evaluate_settings(_params(detectors=["x"])).detectors_of(_params()) == ["x"]


@pytest.mark.parametrize(("change", "named"), [
    ({"n_bot": 3}, "n_bot"),
    ({"primary": {"fmr": 0.001, "treshold": "fixed"}}, "treshold"),
])
def test_unknown_keys_are_named(change: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        evaluate_settings(_params(**change))


@pytest.mark.parametrize(("spec", "named"), [
    ({"kind": "ytf", "dataset": "ytf"}, "needs a split"),
    ({"kind": "csv", "dataset": "mine"}, "needs the path"),
    ({"kind": "lwf", "dataset": "lfw"}, "kind='lwf'"),
])
def test_benchmark_entries_are_checked(spec: dict, named: str) -> None:
    with pytest.raises(UsageError, match=named):
        evaluate_settings(_params(benchmarks={"b": spec}))


@pytest.mark.parametrize("primary", [{"fmr": 0.1, "threshold": "fixed"},
                                     {"fmr": 0.01, "threshold": "median"}])
def test_primary_must_be_an_evaluated_mode(primary: dict) -> None:
    with pytest.raises(UsageError, match="evaluate.primary"):
        evaluate_settings(_params(primary=primary))


def test_one_note_for_all_undefined_paucs() -> None:
    results = pd.DataFrame({"pauc": [0.8, math.nan, math.nan, 1.0],
                            "fnmr0": [0.1, 0.0, 0.2, 0.1]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("3 of 10 bootstrap resamples had an undefined pAUC and were dropped",
                      UserWarning, stacklevel=1)
    note = undefined_pauc_note(results, caught)
    assert note.startswith("evaluate: pAUC undefined (NaN) in 2 of 4 result rows")
    assert "1 because FNMR(0) = 0" in note and "1 because no mated pair is left" in note
    assert "1 bootstrap intervals" in note and "\n" not in note
    assert undefined_pauc_note(results.iloc[[0, 3]], []) == ""
