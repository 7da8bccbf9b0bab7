import numpy as np
import pandas as pd
import pytest

from aikd.data.validation import DataValidationError, validate_labels, validate_landmarks


def _landmark_table(n: int = 50) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    paths = [f"images/p{i}.jpg" for i in range(n)]
    table = pd.DataFrame({"path": paths, "status": "ok"})
    for i in range(5):
        table[f"x{i}"] = rng.uniform(40, 110, n)
        table[f"y{i}"] = rng.uniform(40, 110, n)
    manifest = pd.DataFrame({"path": paths, "width": 150, "height": 150})
    return table, manifest


def test_good_landmark_table_passes():
    table, manifest = _landmark_table()
    assert validate_landmarks(table, manifest, "good", max_failure_rate=0.1).success


def test_landmark_table_gate_catches_each_problem():
    table, manifest = _landmark_table()
    table.loc[0, "x3"] = np.nan  # an ok row without a finite point
    table.loc[1:3, "x0"] = 400.0  # 3/50 far outside the image (> 2 % tolerance)
    table.loc[4, "status"] = "exploded"  # unknown status
    table.loc[5:20, "status"] = "no_face"  # 32 % failures
    report = validate_landmarks(table, manifest, "bad", max_failure_rate=0.2)
    text = report.to_markdown()
    assert not report.success
    for needle in ("points_finite", "points_inside", "exploded", "status"):
        assert needle in text
    with pytest.raises(DataValidationError):
        report.raise_for_failure()


def test_failure_message_starts_with_one_summary_line(tmp_path):
    """The CLI prints the first line only: it names the table, the count and the report."""
    table, manifest = _landmark_table()
    table.loc[5:20, "status"] = "no_face"
    report = validate_landmarks(table, manifest, "bad", max_failure_rate=0.2)
    path = report.write(tmp_path / "bad_validation.md")
    with pytest.raises(DataValidationError) as exc:
        report.raise_for_failure()
    first, rest = str(exc.value).split("\n", 1)
    assert first == (f"validation of {report.name} failed: {len(report.failures)} of "
                     f"{report.n_expectations} expectations (report: {path})")
    assert rest.strip() == report.to_markdown().strip() and exc.value.exit_code == 1


def test_failed_rows_may_lack_points():
    table, manifest = _landmark_table()
    table.loc[0, [f"x{i}" for i in range(5)]] = np.nan
    table.loc[0, "status"] = "no_face"
    assert validate_landmarks(table, manifest, "ok", max_failure_rate=0.1).success


def test_label_gate():
    labels = pd.DataFrame({"path": [f"p{i}" for i in range(10)], "quality": np.linspace(0, 1, 10)})
    assert validate_labels(labels, "fine", min_coverage=0.8).success
    bad = labels.copy()
    bad.loc[0, "quality"] = np.inf
    bad.loc[1, "path"] = "p2"
    bad.loc[3:5, "quality"] = np.nan  # 70 % coverage < 80 %
    report = validate_labels(bad, "broken", min_coverage=0.8)
    assert not report.success
    text = report.to_markdown()
    assert "quality_finite" in text and "unique" in text and "not_be_null" in text
    # The report names the files whose label is missing, so they can be looked at.
    null_row = next(line for line in text.splitlines() if "not_be_null" in line)
    assert all(f"p{i}: nan" in null_row for i in (3, 4, 5)), null_row
    assert "p6" not in null_row  # a good row
