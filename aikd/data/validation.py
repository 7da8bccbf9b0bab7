"""Great Expectations suites that gate each table before anything downstream uses it.

A failed suite raises `DataValidationError`: its first line names the table, the count of
failed expectations and the report file; the rest is the readable report (which expectation
failed, how many rows, examples), also written to disk for DVC/MLflow.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402

from aikd.errors import AikdError  # noqa: E402

LANDMARK_STATUSES = ("ok", "no_face", "unreadable", "error", "no_reference")


class DataValidationError(AikdError, ValueError):
    """A table failed its expectation suite (a failure, exit 1): a one-line summary, then
    the readable report."""


@dataclass
class ValidationReport:
    name: str
    success: bool
    n_rows: int
    failures: list[dict[str, Any]] = field(default_factory=list)
    n_expectations: int = 0
    path: Path | None = field(default=None, compare=False)  # where write() put the report

    def to_markdown(self) -> str:
        head = "PASSED" if self.success else "FAILED"
        lines = [
            f"# Validation of `{self.name}`: {head}",
            "",
            f"{self.n_rows} rows, {self.n_expectations} expectations, {len(self.failures)} failed.",
        ]
        if self.failures:
            lines += ["", "| expectation | column | unexpected | examples |", "|---|---|---|---|"]
            for f in self.failures:
                ex = ", ".join(map(str, f["examples"]))[:200]
                lines.append(f"| {f['expectation']} | {f['column']} | {f['unexpected']} | {ex} |")
        return "\n".join(lines) + "\n"

    def write(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.to_markdown())
        self.path = p
        return p

    def raise_for_failure(self) -> None:
        if not self.success:
            where = f" (report: {self.path})" if self.path else ""
            raise DataValidationError(
                f"validation of {self.name} failed: {len(self.failures)} of "
                f"{self.n_expectations} expectations{where}\n\n{self.to_markdown()}")


def _context() -> Any:
    ctx = gx.get_context(mode="ephemeral")
    try:
        ctx.variables.progress_bars = {"globally": False, "metric_calculations": False}
    except Exception:  # noqa: BLE001 -- progress bars are cosmetic; older configs differ
        pass
    return ctx


def validate(df: pd.DataFrame, name: str, expectations: Sequence[Any]) -> ValidationReport:
    """Run expectations on a DataFrame with an ephemeral GX context."""
    ctx = _context()
    batch_def = (
        ctx.data_sources.add_pandas(f"aikd_{name}")
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe("all")
    )
    suite = gx.ExpectationSuite(name=name)
    for exp in expectations:
        suite.add_expectation(exp)
    # With a `path` column, failing rows are reported by file, not only by value.
    fmt: dict[str, Any] = {"result_format": "SUMMARY"}
    if "path" in df.columns:
        fmt["unexpected_index_column_names"] = ["path"]
    result = batch_def.get_batch(batch_parameters={"dataframe": df}).validate(
        suite, result_format=fmt)
    failures = []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        res = r.result or {}
        column = cfg.kwargs.get("column", cfg.kwargs.get("column_list", ""))
        rows = res.get("partial_unexpected_index_list") or []
        examples = ([f"{row['path']}: {row.get(column, '')}" for row in rows[:5]]
                    if rows and isinstance(rows[0], dict) and "path" in rows[0]
                    else (res.get("partial_unexpected_list") or [])[:5])
        failures.append(
            {
                "expectation": cfg.type,
                "column": column,
                "unexpected": res.get("unexpected_count", res.get("observed_value", "")),
                "examples": examples,
            }
        )
    return ValidationReport(name, bool(result.success), len(df), failures, len(result.results))


def manifest_expectations() -> list[Any]:
    """Paths exist and are unique, identity present, sizes positive, eval images only in test."""
    return [
        gxe.ExpectColumnValuesToBeUnique(column="path"),
        gxe.ExpectColumnValuesToNotBeNull(column="path"),
        gxe.ExpectColumnValuesToNotBeNull(column="identity"),
        gxe.ExpectColumnValuesToBeInSet(column="file_exists", value_set=[True]),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=1),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "val", "test"]),
        gxe.ExpectColumnValuesToBeInSet(
            column="split",
            value_set=["test"],
            row_condition="in_eval_pairs==True",
            condition_parser="pandas",
        ),
    ]


def validate_manifest(manifest: pd.DataFrame, name: str) -> ValidationReport:
    df = manifest.copy()
    df["file_exists"] = [
        (Path(r) / p).is_file() for r, p in zip(df["root"], df["path"], strict=True)
    ]
    return validate(df, f"manifest_{name}", manifest_expectations())


def landmark_expectations(max_failure_rate: float) -> list[Any]:
    """Statuses known, ok rows have 5 finite points inside the image, failure rate bounded."""
    return [
        gxe.ExpectColumnValuesToBeUnique(column="path"),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=list(LANDMARK_STATUSES)),
        gxe.ExpectColumnValuesToBeInSet(
            column="points_finite",
            value_set=[True],
            row_condition='status=="ok"',
            condition_parser="pandas",
        ),
        # A face cut by the border can have a real landmark just outside the image.
        gxe.ExpectColumnValuesToBeInSet(
            column="points_inside",
            value_set=[True],
            row_condition='status=="ok"',
            condition_parser="pandas",
            mostly=0.98,
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="status", value_set=["ok"], mostly=max(0.0, 1.0 - max_failure_rate)
        ),
    ]


def points_inside(table: pd.DataFrame, manifest: pd.DataFrame, margin: float = 0.0) -> np.ndarray:
    """Per row: are all 5 landmarks finite and inside the image (plus `margin` pixels)?"""
    sizes = manifest.set_index("path")[["width", "height"]]
    wh = sizes.reindex(table["path"]).to_numpy(dtype=np.float64)
    xs = table[[f"x{i}" for i in range(5)]].to_numpy(dtype=np.float64)
    ys = table[[f"y{i}" for i in range(5)]].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ok_x = (xs >= -margin) & (xs <= wh[:, :1] + margin)
        ok_y = (ys >= -margin) & (ys <= wh[:, 1:] + margin)
    return np.all(ok_x & ok_y & np.isfinite(xs) & np.isfinite(ys), axis=1)


def validate_landmarks(
    table: pd.DataFrame, manifest: pd.DataFrame, name: str, max_failure_rate: float
) -> ValidationReport:
    df = table.copy()
    df["points_inside"] = points_inside(df, manifest)
    df["points_finite"] = np.isfinite(df[[f"{a}{i}" for i in range(5) for a in "xy"]]).all(axis=1)
    return validate(df, f"landmarks_{name}", landmark_expectations(max_failure_rate))


def label_expectations(min_coverage: float) -> list[Any]:
    """Labels are unique per image, finite where present, and cover most images."""
    return [
        gxe.ExpectColumnValuesToBeUnique(column="path"),
        gxe.ExpectColumnValuesToNotBeNull(column="quality", mostly=min_coverage),
        gxe.ExpectColumnValuesToBeInSet(
            column="quality_finite",
            value_set=[True],
            row_condition="quality_present==True",
            condition_parser="pandas",
        ),
    ]


def validate_labels(labels: pd.DataFrame, name: str, min_coverage: float) -> ValidationReport:
    """Gate a pseudo-label table (`path`, `quality`) before anything trains on it."""
    df = labels[["path", "quality"]].copy()
    q = pd.to_numeric(df["quality"], errors="coerce").astype(float)
    df["quality_present"] = q.notna()
    df["quality_finite"] = np.isfinite(q.to_numpy())
    # NaN counts as missing for the coverage check.
    df["quality"] = q.where(np.isfinite(q.to_numpy()) | q.isna())
    return validate(df, f"labels_{name}", label_expectations(min_coverage))
