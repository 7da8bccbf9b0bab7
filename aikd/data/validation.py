"""Great Expectations suites that gate each table before anything downstream uses it.

A failed suite raises `DataValidationError`: its first line names the table, the count of
failed expectations and the report file; the rest is the readable report (which expectation
failed, how many rows, examples), also written to disk for DVC/MLflow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
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
    notes: list[str] = field(default_factory=list)  # markdown lines after the table
    offenders: list[str] = field(default_factory=list)  # e.g. people in two splits

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
        if self.notes:
            lines += ["", *self.notes]
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
            who = ""
            if self.offenders:
                shown = ", ".join(self.offenders[:20])
                more = f" and {len(self.offenders) - 20} more" if len(self.offenders) > 20 else ""
                who = f"; offending: {shown}{more}"
            raise DataValidationError(
                f"validation of {self.name} failed: {len(self.failures)} of "
                f"{self.n_expectations} expectations{where}{who}\n\n{self.to_markdown()}")


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
    """Paths exist and are unique, identity and person present, sizes positive, splits
    known, and each person in one split (`person_splits`: splits the row's person is in)."""
    return [
        gxe.ExpectColumnValuesToBeUnique(column="path"),
        gxe.ExpectColumnValuesToNotBeNull(column="path"),
        gxe.ExpectColumnValuesToNotBeNull(column="identity"),
        gxe.ExpectColumnValuesToNotBeNull(column="person"),
        gxe.ExpectColumnValuesToBeInSet(column="file_exists", value_set=[True]),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=1),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "val", "test"]),
        gxe.ExpectColumnValuesToBeInSet(column="person_splits", value_set=[1]),
    ]


def validate_manifest(manifest: pd.DataFrame, name: str) -> ValidationReport:
    df = manifest.copy()
    df["file_exists"] = [
        (Path(r) / p).is_file() for r, p in zip(df["root"], df["path"], strict=True)
    ]
    df["person_splits"] = df.groupby("person", dropna=False)["split"].transform("nunique")
    return validate(df, f"manifest_{name}", manifest_expectations())


def person_split_rows(manifests: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The distinct (person, split) rows of the union of manifests (name -> manifest with
    `person` and `split`), with `datasets`: where each row comes from, e.g. ``lfw, ytf``."""
    parts = [m[["person", "split"]].assign(dataset=str(name)) for name, m in manifests.items()]
    union = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["person", "split", "dataset"])
    rows = (union.groupby(["person", "split"], sort=True, dropna=False)["dataset"]
            .agg(lambda d: ", ".join(sorted(set(d)))).rename("datasets").reset_index())
    return rows


def validate_person_splits(manifests: Mapping[str, pd.DataFrame],
                           name: str = "person_splits") -> ValidationReport:
    """The cross-manifest gate: every person (normalised name) is in one split over all the
    given manifests. A GX uniqueness expectation on `person` over the distinct
    (person, split) rows, whose unexpected values are the offending people; the report
    lists each of them with the split it has in each data set."""
    rows = person_split_rows(manifests)
    report = validate(rows, name, [gxe.ExpectColumnValuesToBeUnique(column="person")])
    report.n_rows = int(sum(len(m) for m in manifests.values()))
    for f in report.failures:  # GX lists a person once per extra split: name each once
        f["examples"] = list(dict.fromkeys(f["examples"]))
    in_sets = pd.Series([p for m in manifests.values() for p in m["person"].unique()])
    report.notes.append(
        f"{rows['person'].nunique()} people over {len(manifests)} manifests "
        f"({', '.join(map(str, manifests))}); {int((in_sets.value_counts() > 1).sum())} "
        f"of them in more than one.")
    bad = rows[rows.duplicated("person", keep=False)]
    if len(bad):
        report.offenders = sorted(bad["person"].unique())
        report.notes += ["", "People in more than one split:", "",
                         "| person | split: data sets |", "|---|---|"]
        for person, part in bad.groupby("person", sort=True):
            where = "; ".join(f"{s}: {d}" for s, d in zip(part["split"], part["datasets"],
                                                             strict=True))
            report.notes.append(f"| {person} | {where} |")
    return report


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
