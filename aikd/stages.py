"""The DVC stages as library functions: `pipelines/*.py` and `aikd <stage>` both call these.

Each reads its params section, calls the library, writes its outs, validates them with
great-expectations and records the run in MLflow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from tqdm import tqdm

from aikd.config import section
from aikd.data.io import write_parquet_atomic
from aikd.data.manifest import build_manifest
from aikd.data.validation import validate_landmarks, validate_manifest
from aikd.tracking import stage_run

log = logging.getLogger("aikd")


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dataset_cfg(params: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    datasets = section(params, "datasets")
    if dataset not in datasets:
        raise KeyError(f"dataset {dataset!r} is not in params 'datasets' ({', '.join(datasets)})")
    return dict(datasets[dataset])


def manifest_path(params: Mapping[str, Any], dataset: str) -> Path:
    return Path(section(params, "manifest")["out_dir"]) / f"{dataset}.parquet"


def manifest_stage(params: Mapping[str, Any], dataset: str) -> pd.DataFrame:
    """Write data/manifests/<dataset>.parquet (+ _rejected.csv, validation report)."""
    cfg = _dataset_cfg(params, dataset)
    out = manifest_path(params, dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    res = build_manifest(
        cfg["kind"],
        cfg["root"],
        fractions=cfg.get("splits", {"train": 0.8, "val": 0.1, "test": 0.1}),
        seed=int(params.get("seed", 0)),
        dataset=dataset,
    )
    if cfg.get("subset"):  # e.g. the smoke profile: {identities: 8, max_images: 4}
        from aikd.data.manifest import subset_manifest

        sub = dict(cfg["subset"])
        res = dataclasses.replace(res, manifest=subset_manifest(
            res.manifest, identities=int(sub["identities"]), max_images=sub.get("max_images"),
            seed=int(params.get("seed", 0))))
    report = validate_manifest(res.manifest, dataset)
    report_path = report.write(out.parent / f"{dataset}_validation.md")
    rejected_path = out.parent / f"{dataset}_rejected.csv"
    res.rejected.to_csv(rejected_path, index=False)
    counts = res.manifest.groupby("split").size().to_dict()
    summary = {
        "images": len(res.manifest),
        "identities": int(res.manifest["identity"].nunique()),
        "rejected": len(res.rejected),
        **{f"split_{k}": int(v) for k, v in counts.items()},
    }
    (out.parent / f"{dataset}_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    # Hashes of the data set's side files (reference landmarks, pairs lists): stages that
    # read them depend on this file, so an edited landmark file re-runs them.
    sources = {f.name: file_md5(f) for f in sorted(Path(cfg["root"]).glob("*")) if f.is_file()}
    (out.parent / f"{dataset}_sources.json").write_text(json.dumps(sources, indent=2) + "\n")
    with stage_run(
        "manifest",
        params,
        run_name=f"manifest-{dataset}",
        log_params={"dataset": cfg, "seed": params.get("seed", 0)},
    ):
        mlflow.log_metrics({f"manifest.{k}": float(v) for k, v in summary.items()})
        mlflow.log_artifact(str(report_path))
        mlflow.log_artifact(str(rejected_path))
    for _, row in res.rejected.iterrows():
        log.warning("%s: skipped (%s)", Path(cfg["root"]) / row["path"], row["reason"])
    report.raise_for_failure()
    res.manifest.to_parquet(out, index=False)
    print(f"manifest {dataset}: {summary}")
    return res.manifest


def landmarks_path(params: Mapping[str, Any], dataset: str, detector: str) -> Path:
    """``<out_dir>/<detector>/<dataset>.parquet``: one folder per detector, so a stage can
    depend on "this detector's landmarks of every data set" (dvc.yaml)."""
    return Path(section(params, "landmarks")["out_dir"]) / detector / f"{dataset}.parquet"


def landmark_rows(params: Mapping[str, Any], manifest: pd.DataFrame, detector: str) -> pd.DataFrame:
    """Which images a detector runs on: all for the training detector, else some splits."""
    cfg = section(params, "landmarks")
    if detector == cfg.get("training_detector", "reference"):
        return manifest
    splits = cfg.get("other_detector_splits") or ["train", "val", "test"]
    return manifest[manifest["split"].isin(splits)].reset_index(drop=True)


def landmarks_stage(params: Mapping[str, Any], dataset: str, detector: str) -> pd.DataFrame:
    """Detect 5 landmarks with one detector on one data set (resumable), then validate."""
    from aikd.landmarks import run_landmarks

    cfg = section(params, "landmarks")
    manifest = pd.read_parquet(manifest_path(params, dataset))
    rows = landmark_rows(params, manifest, detector)
    out = landmarks_path(params, dataset, detector)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = run_landmarks(
        rows,
        detector,
        out,
        batch_size=int(cfg.get("batch_size", 32)),
        checkpoint_every=int(cfg.get("checkpoint_every", 500)),
        threads=int(cfg.get("threads", 2)),
    )
    report = validate_landmarks(
        table, manifest, f"{dataset}_{detector}", float(cfg.get("max_failure_rate", 0.2))
    )
    report_path = report.write(out.with_name(f"{dataset}_validation.md"))
    status = table["status"].value_counts().to_dict()
    with stage_run(
        "landmarks",
        params,
        run_name=f"landmarks-{dataset}-{detector}",
        log_params={"dataset": dataset, "detector": detector, **cfg},
    ):
        mlflow.log_metrics({f"landmarks.{k}": float(v) for k, v in status.items()})
        mlflow.log_metric("landmarks.found_share", status.get("ok", 0) / max(len(table), 1))
        mlflow.log_artifact(str(report_path))
    for _, row in table[table["status"] != "ok"].head(20).iterrows():
        log.warning("%s %s: %s %s", detector, row["path"], row["status"], row.get("message", ""))
    print(f"landmarks {dataset}/{detector}: {status}")
    report.raise_for_failure()
    return table


def landmark_report_stage(params: Mapping[str, Any]) -> pd.DataFrame:
    """Detector agreement: found share and NME to `reference`, per data set and detector."""
    from aikd.landmarks import landmark_agreement, plot_nme

    cfg = section(params, "landmark_report")
    detectors = list(section(params, "landmarks")["detectors"])
    out_dir = Path(cfg["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    tables: dict[str, list[pd.DataFrame]] = {d: [] for d in detectors}
    for dataset in section(params, "datasets"):
        for det in detectors:
            path = landmarks_path(params, dataset, det)
            if path.is_file():
                tables[det].append(pd.read_parquet(path))
    merged = {d: pd.concat(t, ignore_index=True) for d, t in tables.items() if t}
    if "reference" not in merged:
        raise ValueError("landmark_report needs the 'reference' detector in landmarks.detectors")
    reference = merged["reference"]
    others = {d: t for d, t in merged.items() if d != "reference"}
    table = landmark_agreement({"reference": reference, **others}, reference)
    table.to_csv(out_dir / "agreement.csv", index=False)
    (out_dir / "agreement.md").write_text(
        "# Landmark agreement with the reference points\n\n"
        "NME = mean distance of the 5 points to reference / reference inter-ocular distance.\n\n"
        + table.to_markdown(index=False, floatfmt=".3f")
        + "\n"
    )
    plot = plot_nme(others, reference, out_dir / "nme_ecdf.png")
    metrics = {
        f"{r.dataset}/{r.detector}": {
            "found_share": round(float(r.found_share), 4),
            "nme_median": round(float(r.nme_median), 4),
            "nme_p90": round(float(r.nme_p90), 4),
        }
        for r in table.itertuples()
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with stage_run("landmark_report", params, run_name="landmark-report",
                   log_params={"detectors": detectors}):
        for key, vals in metrics.items():
            for name, v in vals.items():
                if v == v:  # skip NaN
                    mlflow.log_metric(f"{key.replace('/', '.')}.{name}", v)
        for f in ("agreement.csv", "agreement.md"):
            mlflow.log_artifact(str(out_dir / f))
        mlflow.log_artifact(str(plot))
    print(table.to_string(index=False))
    return table


def embeddings_path(params: Mapping[str, Any], dataset: str, detector: str) -> Path:
    cfg = section(params, "embed")
    return Path(cfg["out_dir"]) / detector / f"{dataset}_{cfg['backbone']}.parquet"


def embed_stage(params: Mapping[str, Any], dataset: str, detector: str) -> Path:
    """Embed every face a detector found, aligned to the backbone's template (resumable)."""
    import torch

    from aikd.embed import embed_table
    from aikd.models import load_backbone

    cfg = section(params, "embed")
    torch.set_num_threads(int(cfg.get("threads", 2)))
    manifest = pd.read_parquet(manifest_path(params, dataset))
    marks = pd.read_parquet(landmarks_path(params, dataset, detector))
    rows = manifest[["root", "path"]].merge(marks[marks["status"] == "ok"], on="path")
    model = load_backbone(cfg["backbone"]).eval().to(memory_format=torch.channels_last)
    out = embeddings_path(params, dataset, detector)
    meta, vectors, failed = embed_table(
        model, rows, out, batch_size=int(cfg.get("batch_size", 64)),
        workers=int(cfg.get("workers", 1)),
    )
    failed.to_csv(out.with_name(out.stem + "_failures.csv"), index=False)
    with stage_run("embed", params, run_name=f"embed-{dataset}-{detector}",
                   log_params={"dataset": dataset, "detector": detector, **cfg}):
        mlflow.log_metrics({"embed.images": len(meta), "embed.failures": len(failed),
                            "embed.skipped_no_landmarks": int((marks["status"] != "ok").sum())})
    print(f"embed {dataset}/{detector}: {len(meta)} faces, {len(failed)} failures")
    return out


def labels_path(params: Mapping[str, Any], method: str) -> Path:
    return Path(section(params, "labels")["out_dir"]) / f"{method}.parquet"


def training_rows(params: Mapping[str, Any]) -> pd.DataFrame:
    """Images the quality model may learn from: non-evaluation splits of the training data
    sets, with their training-detector landmarks (`ok` rows only)."""
    cfg = section(params, "labels")
    detector = section(params, "landmarks").get("training_detector", "reference")
    frames = []
    for ds in cfg["datasets"]:
        manifest = pd.read_parquet(manifest_path(params, ds))
        marks = pd.read_parquet(landmarks_path(params, ds, detector))
        rows = manifest[manifest["split"].isin(cfg["splits"]) & ~manifest["in_eval_pairs"]]
        rows = rows.merge(marks[marks["status"] == "ok"].drop(columns=["dataset"]), on="path")
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)


def _serfiq_labels(params: Mapping[str, Any], rows: pd.DataFrame, cfg: Mapping[str, Any]):
    import torch

    from aikd.embed import iter_aligned, landmarks_array
    from aikd.fiqa import serfiq_scores
    from aikd.models import load_backbone

    s = dict(cfg.get("serfiq", {}))
    model = load_backbone(section(params, "embed")["backbone"]).eval()
    files = [str(Path(r) / p) for r, p in zip(rows["root"], rows["path"], strict=True)]
    quality = np.full(len(rows), np.nan)
    status = np.full(len(rows), "ok", dtype=object)
    seed = int(params.get("seed", 0))
    torch.manual_seed(seed)
    batches = iter_aligned(files, landmarks_array(rows), model.template, batch_size=128)
    for b, (idx, batch, bad) in enumerate(tqdm(batches, desc="serfiq", unit="batch",
                                              total=(len(rows) + 127) // 128)):
        for i, msg in bad:
            status[i] = msg
        if batch is not None:
            quality[np.asarray(idx)] = serfiq_scores(
                model, batch, T=int(s.get("T", 100)), rate=float(s.get("rate", 0.5)),
                placement=s.get("placement", "pooled"), dropout=s.get("dropout", "element"),
                seed=seed + b,
            )
    return quality, status


def labels_stage(params: Mapping[str, Any], method: str) -> pd.DataFrame:
    """Pseudo quality labels of one FIQA method on the reference-aligned training images."""
    import warnings

    from aikd.data.io import read_vectors
    from aikd.data.validation import validate_labels
    from aikd.fiqa import crfiqa_labels, import_label_csv, sddfiqa_labels

    cfg = section(params, "labels")
    rows = training_rows(params)
    detector = section(params, "landmarks").get("training_detector", "reference")
    quality = np.full(len(rows), np.nan)
    status = np.full(len(rows), "ok", dtype=object)  # why a row has no label
    unmatched = pd.DataFrame()
    if method in ("sddfiqa", "crfiqa"):
        for ds, idx in rows.groupby("dataset").groups.items():
            meta, vectors = read_vectors(embeddings_path(params, str(ds), detector))
            pos = pd.Series(np.arange(len(meta)), index=meta["path"])
            sub = rows.loc[idx]
            have = sub["path"].isin(pos.index).to_numpy()
            status[np.asarray(idx)[~have]] = "no_embedding (see the embed stage's failures)"
            emb = vectors[pos[sub["path"][have]].to_numpy()]
            ids = sub["identity"][have].to_numpy()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # singletons are counted below
                if method == "sddfiqa":
                    s = cfg.get("sddfiqa", {})
                    q = sddfiqa_labels(emb, ids, m=int(s.get("m", 24)), k=int(s.get("k", 12)),
                                       seed=int(params.get("seed", 0)))
                else:
                    q = crfiqa_labels(emb, ids, variant=cfg.get("crfiqa", {}).get("variant",
                                                                                 "paper"))
            quality[np.asarray(idx)[have]] = q
    elif method == "serfiq":
        quality, status = _serfiq_labels(params, rows, cfg)
    elif method == "csv":
        src = cfg.get("csv", {}).get("path")
        if not src:
            raise ValueError("labels.csv.path is not set in params")
        imported, unmatched = import_label_csv(src, rows)
        quality = rows["path"].map(imported.set_index("path")["quality"]).to_numpy(float)
        status[np.isnan(quality)] = "not_in_csv"
    else:
        raise ValueError(f"unknown label method {method!r}; expected serfiq, sddfiqa, crfiqa, csv")
    singleton = rows.groupby(["dataset", "identity"])["path"].transform("size").to_numpy() == 1
    status[(status == "ok") & np.isnan(quality) & singleton] = "singleton_identity"
    status[(status == "ok") & np.isnan(quality)] = "no_label"
    labels = rows[["path", "dataset", "identity", "split"]].assign(quality=quality,
                                                                  status=status)
    for r in labels[~labels["status"].isin(["ok", "singleton_identity"])].itertuples():
        log.warning("labels %s: %s/%s has no label: %s", method, r.dataset, r.path, r.status)
    out = labels_path(params, method)
    out.parent.mkdir(parents=True, exist_ok=True)
    gate = labels
    if method in ("sddfiqa", "crfiqa"):
        # Both compare an image with the person's other images: a singleton identity has no
        # label by construction (counted in the summary), so coverage is gated on the rest.
        sizes = labels.groupby(["dataset", "identity"])["path"].transform("size")
        gate = labels[sizes > 1]
    report = validate_labels(gate, method, float(cfg.get("min_coverage", 0.8)))
    report_path = report.write(out.with_name(f"{method}_validation.md"))
    q = labels["quality"]
    summary = {
        "count": int(q.notna().sum()),
        "missing": int(q.isna().sum()),
        "missing_singleton_identity": int((labels["status"] == "singleton_identity").sum()),
        "missing_other": int((q.isna() & ~labels["status"].isin(["singleton_identity"])).sum()),
        "min": float(q.min()),
        "median": float(q.median()),
        "max": float(q.max()),
        "unmatched_csv_rows": len(unmatched),
    }
    (out.with_name(f"{method}_summary.json")).write_text(json.dumps(summary, indent=2) + "\n")
    with stage_run("labels", params, run_name=f"labels-{method}",
                   log_params={"method": method, **cfg}):
        mlflow.log_metrics({f"labels.{k}": float(v) for k, v in summary.items()})
        mlflow.log_artifact(str(report_path))
    print(f"labels {method}: {summary}")
    report.raise_for_failure()
    write_parquet_atomic(labels, out)
    return labels
