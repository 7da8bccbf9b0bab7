"""How far apart detectors put the same 5 points: NME against the reference landmarks.

NME (normalised mean error) of one image = mean over the 5 points of the Euclidean
distance to the reference point, divided by the reference inter-ocular distance (between
reference points 0 and 1). Dividing by the eye distance makes errors comparable across
face sizes (LFW 150 px crops vs. YTF frames of 100-320 px).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from aikd.landmarks.base import POINT_COLUMNS, POINT_NAMES

POINT_ERROR_COLUMNS = [f"median_err_{n}" for n in POINT_NAMES]


def point_errors(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-point distance / reference inter-ocular distance: (..., 5, 2) x2 -> (..., 5).

    A reference with coinciding eyes (IOD 0) gives NaN rather than infinity.
    """
    pred = np.asarray(points, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if pred.shape[-2:] != (5, 2) or ref.shape[-2:] != (5, 2):
        raise ValueError(f"expected (..., 5, 2) points, got {pred.shape} and {ref.shape}")
    iod = np.linalg.norm(ref[..., 0, :] - ref[..., 1, :], axis=-1)
    iod = np.where(iod > 0, iod, np.nan)
    return np.linalg.norm(pred - ref, axis=-1) / iod[..., None]


def nme(points: np.ndarray, reference: np.ndarray) -> np.ndarray | float:
    """Normalised mean error per image ((N,5,2) -> (N,)); a float for one (5,2) pair."""
    out = point_errors(points, reference).mean(axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def _points(df: pd.DataFrame) -> np.ndarray:
    return df[POINT_COLUMNS].to_numpy(dtype=np.float64).reshape(-1, 5, 2)


def _usable_reference(reference: pd.DataFrame) -> pd.DataFrame:
    """Reference rows with all 5 points (a runner table's failed rows are dropped)."""
    ref = reference
    if "status" in ref.columns:
        ref = ref[ref["status"] == "ok"]
    ref = ref[np.isfinite(_points(ref)).all(axis=(1, 2))]
    return ref.drop_duplicates(subset=[c for c in ("dataset", "path") if c in ref.columns])


def paired_errors(table: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Per image of ``table`` that has a reference: dataset, path, found, nme, point errors.

    Joined on (dataset, path) when both frames have a dataset column, else on path.
    Images the detector missed are kept with ``found=False`` and NaN errors.
    """
    ref = _usable_reference(reference)
    on = ["dataset", "path"] if {"dataset"} <= set(table.columns) & set(ref.columns) else ["path"]
    left = table.copy()
    if "dataset" not in left.columns:
        left["dataset"] = "all"
    if "status" not in left.columns:
        left["status"] = np.where(np.isfinite(_points(left)).all(axis=(1, 2)), "ok", "no_face")
    merged = left[["dataset", "path", "status", *POINT_COLUMNS]].merge(
        ref[[*on, *POINT_COLUMNS]], on=on, how="inner", suffixes=("", "_ref")
    )
    errs = point_errors(
        _points(merged), merged[[f"{c}_ref" for c in POINT_COLUMNS]].to_numpy().reshape(-1, 5, 2)
    )
    found = (merged["status"] == "ok").to_numpy() & np.isfinite(errs).all(axis=1)
    errs[~found] = np.nan
    out = merged[["dataset", "path"]].copy()
    out["found"] = found
    out["nme"] = errs.mean(axis=1)
    for k, name in enumerate(POINT_NAMES):
        out[f"err_{name}"] = errs[:, k]
    return out.reset_index(drop=True)


def landmark_agreement(
    tables: Mapping[str, pd.DataFrame], reference: pd.DataFrame
) -> pd.DataFrame:
    """Per (dataset, detector): how often it finds the face and how close it lands.

    ``tables`` maps detector name -> runner table (``path, dataset, status, x0..y4``);
    ``reference`` holds the reference points (a runner table of the reference detector or
    `load_reference_landmarks` output). Columns: ``n_images`` (rows of the detector table),
    ``found_share`` (share with status ok), ``n_compared`` (found and with a reference),
    ``nme_median``, ``nme_p90``, ``nme_mean``, ``share_nme_le_0.2``, and the median
    normalised error of each point (``median_err_eye_left`` ...).
    """
    rows = []
    for name, table in tables.items():
        t = table if "dataset" in table.columns else table.assign(dataset="all")
        paired = paired_errors(t, reference)
        for dataset, group in t.groupby("dataset", sort=True):
            found_share = (
                float((group["status"] == "ok").mean()) if "status" in group.columns else np.nan
            )
            p = paired[(paired["dataset"] == dataset) & paired["found"]]
            values = p["nme"].to_numpy()
            row = {
                "dataset": dataset,
                "detector": name,
                "n_images": len(group),
                "found_share": found_share,
                "n_compared": len(p),
                "nme_median": float(np.median(values)) if len(values) else np.nan,
                "nme_p90": float(np.percentile(values, 90)) if len(values) else np.nan,
                "nme_mean": float(values.mean()) if len(values) else np.nan,
                "share_nme_le_0.2": float((values <= 0.2).mean()) if len(values) else np.nan,
            }
            for n, col in zip(POINT_NAMES, POINT_ERROR_COLUMNS, strict=True):
                row[col] = float(p[f"err_{n}"].median()) if len(p) else np.nan
            rows.append(row)
    cols = ["dataset", "detector", "n_images", "found_share", "n_compared", "nme_median",
            "nme_p90", "nme_mean", "share_nme_le_0.2", *POINT_ERROR_COLUMNS]
    return pd.DataFrame(rows, columns=cols).sort_values(["dataset", "detector"]).reset_index(
        drop=True
    )


def plot_nme(
    tables: Mapping[str, pd.DataFrame],
    reference: pd.DataFrame,
    out_path: str | Path,
    *,
    max_nme: float = 0.3,
) -> Path:
    """Save an ECDF of NME per detector, one panel per dataset, as a PNG.

    The curve's denominator is every image with a reference, so a detector that misses
    faces tops out below 1 at its found share: accuracy and coverage in one picture.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paired = {name: paired_errors(t, reference) for name, t in tables.items()}
    datasets = sorted({d for p in paired.values() for d in p["dataset"].unique()}) or ["all"]
    fig, axes = plt.subplots(
        1, len(datasets), figsize=(5.5 * len(datasets), 4.2), squeeze=False
    )
    grid = np.linspace(0.0, max_nme, 301)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for name, p in sorted(paired.items()):
            d = p[p["dataset"] == dataset]
            if not len(d):
                continue
            values = np.sort(d["nme"].to_numpy()[d["found"].to_numpy()])
            ecdf = np.searchsorted(values, grid, side="right") / len(d)
            median = np.median(values) if len(values) else np.nan
            ax.plot(grid, ecdf, label=f"{name} (median {median:.3f})")
        ax.set_title(f"{dataset}: NME to reference")
        ax.set_xlabel("NME (mean point error / reference inter-ocular distance)")
        ax.set_ylabel("share of images")
        ax.set_xlim(0, max_nme)
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
