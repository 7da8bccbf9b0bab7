"""How far apart detectors put the same 5 points: NME against the reference landmarks.

NME (normalised mean error) of one image = mean over the 5 points of the Euclidean
distance to the reference point, divided by the reference inter-ocular distance (between
reference points 0 and 1). Dividing by the eye distance makes errors comparable across
face sizes (LFW 150 px crops vs. YTF frames of 100-320 px).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


# ------------------------------------------------------- disagreement with training alignment

#: Simulated images behind the jitter-to-NME factor (its sampling error is ~0.1 %).
JITTER_SAMPLES = 200_000


def jitter_nme_factor(n_samples: int = JITTER_SAMPLES, seed: int = 0) -> float:
    """Median 5-point NME of landmarks jittered by U[-1, 1] per coordinate, in units of the
    inter-ocular distance (``LandmarkJitter(units="iod")``): NME scales linearly with the
    range p, so jitter U[-p, p] gives a median NME of p times this factor (~0.76; the mean
    displacement of ONE point is 0.7652 p, the median of a 5-point mean is close to it)."""
    rng = np.random.default_rng(seed)
    offsets = rng.uniform(-1.0, 1.0, size=(int(n_samples), 5, 2))
    return float(np.median(np.linalg.norm(offsets, axis=-1).mean(axis=-1)))


def training_disagreement(
    tables: Mapping[str, pd.DataFrame],
    training: pd.DataFrame,
    images: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per detector: NME to the TRAINING alignment (its inter-ocular distance), pooled over
    data sets, on ``images`` only (a frame of ``dataset``/``path``, e.g. the validation
    split; None: all). Columns detector, n_images, n_compared (found faces), nme_median,
    nme_p90."""
    rows = []
    for name, table in tables.items():
        t = table if "dataset" in table.columns else table.assign(dataset="all")
        paired = paired_errors(t, training)
        if images is not None:
            keys = images[["dataset", "path"]].drop_duplicates()
            paired = paired.merge(keys, on=["dataset", "path"], how="inner")
        values = paired.loc[paired["found"], "nme"].to_numpy()
        rows.append({
            "detector": name,
            "n_images": len(paired),
            "n_compared": len(values),
            "nme_median": float(np.median(values)) if len(values) else np.nan,
            "nme_p90": float(np.percentile(values, 90)) if len(values) else np.nan,
        })
    return pd.DataFrame(rows, columns=["detector", "n_images", "n_compared", "nme_median",
                                       "nme_p90"])


def suggest_jitter_p(disagreement: pd.DataFrame, *, factor: float | None = None) -> dict:
    """The jitter range p (inter-ocular units) whose uniform jitter U[-p, p] per coordinate
    gives the same median NME as the detectors' typical disagreement with the training
    alignment: the median over detectors of their median NME, divided by
    ``jitter_nme_factor()``."""
    values = disagreement["nme_median"].dropna().to_numpy(dtype=np.float64)
    if not len(values):
        raise ValueError("no detector has an NME to the training alignment")
    factor = jitter_nme_factor() if factor is None else float(factor)
    target = float(np.median(values))
    return {"jitter_p_suggested": target / factor, "target_median_nme": target,
            "jitter_nme_factor": factor}


def add_training_disagreement(params: Mapping[str, Any]) -> dict:
    """Part of the ``landmark_report`` stage: each detector's median NME to the training
    alignment (``landmarks.training_detector``) on validation images, and the suggested
    ``distill.max_shift`` (``jitter_units: iod``), added to ``metrics.json`` (key
    ``jitter_p_suggested``) and ``agreement.md`` of the report written just before."""
    import json

    from aikd.config import section
    from aikd.paths import landmarks_path, manifest_path

    lm = section(params, "landmarks")
    training_name = str(lm["training_detector"])
    out_dir = Path(section(params, "landmark_report")["out_dir"])
    images, tables, training = [], {}, []
    for dataset in section(params, "datasets"):
        man = pd.read_parquet(manifest_path(params, dataset))
        images.append(man.loc[man["split"] == "val", ["path"]].assign(dataset=dataset))
        for det in lm["detectors"]:
            path = landmarks_path(params, dataset, det)
            if path.is_file():
                t = pd.read_parquet(path)
                t = t if "dataset" in t.columns else t.assign(dataset=dataset)
                (training.append(t) if det == training_name
                 else tables.setdefault(det, []).append(t))
    if not training:
        raise ValueError(f"no landmarks of the training detector {training_name!r}")
    val = pd.concat(images, ignore_index=True)
    table = training_disagreement({d: pd.concat(t, ignore_index=True)
                                   for d, t in tables.items()},
                                  pd.concat(training, ignore_index=True), val)
    suggestion = suggest_jitter_p(table)
    metrics_file = out_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    for r in table.itertuples():
        metrics[f"val_to_{training_name}/{r.detector}"] = {
            "nme_median": round(float(r.nme_median), 4), "n_compared": int(r.n_compared)}
    metrics["jitter_p_suggested"] = round(suggestion["jitter_p_suggested"], 4)
    metrics_file.write_text(json.dumps(metrics, indent=2) + "\n")
    p = suggestion["jitter_p_suggested"]
    section_md = (
        f"\n## Disagreement with the training alignment ({training_name}), validation images\n\n"
        f"NME to the {training_name} points / {training_name} inter-ocular distance, pooled "
        "over data sets, on the validation split's images only.\n\n"
        + table.to_markdown(index=False, floatfmt=".4f")
        + f"\n\nSuggested `distill.max_shift` (`jitter_units: iod`): **p = {p:.3f}**. Why: "
        f"uniform jitter U[-p, p] per coordinate of the 5 points gives a median NME of "
        f"{suggestion['jitter_nme_factor']:.4f} p (seeded simulation of "
        f"{JITTER_SAMPLES:,} jittered faces), and p = {p:.3f} makes that equal to "
        f"{suggestion['target_median_nme']:.4f}, the median over detectors of their median "
        "NME to the training alignment, so training misaligns faces about as much as a "
        "typical other detector does.\n"
    )
    agreement = out_dir / "agreement.md"
    agreement.write_text((agreement.read_text() if agreement.is_file() else "") + section_md)
    print(table.to_string(index=False))
    print(f"jitter_p_suggested = {p:.4f} (target median NME {suggestion['target_median_nme']:.4f}"
          f", factor {suggestion['jitter_nme_factor']:.4f})")
    return {"table": table, **suggestion}
