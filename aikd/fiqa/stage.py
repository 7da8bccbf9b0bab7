"""DVC stage ``labels@<method>``: pseudo quality labels of the training images."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from tqdm import tqdm

from aikd.config import global_seed, section
from aikd.data.io import write_parquet_atomic
from aikd.data.training import training_detector, training_rows
from aikd.errors import UsageError
from aikd.fiqa.settings import LabelsSettings, SerfiqSettings, labels_settings
from aikd.paths import embeddings_path, labels_path
from aikd.tracking import stage_run

log = logging.getLogger("aikd")


def _serfiq_labels(params: Mapping[str, Any], rows: pd.DataFrame, s: SerfiqSettings):
    import torch

    from aikd.faces import iter_aligned, landmarks_array, row_files
    from aikd.fiqa.serfiq import serfiq_scores
    from aikd.models.registry import load_backbone

    embed = section(params, "embed")
    model = load_backbone(embed["backbone"], embed.get("backbone_weights")).eval()
    files = row_files(rows)
    quality = np.full(len(rows), np.nan)
    status = np.full(len(rows), "ok", dtype=object)
    seed = global_seed(params)
    torch.manual_seed(seed)
    batches = iter_aligned(files, landmarks_array(rows), model.template, batch_size=128)
    for b, (idx, batch, bad) in enumerate(tqdm(batches, desc="serfiq", unit="batch",
                                              total=(len(rows) + 127) // 128)):
        for i, msg in bad:
            status[i] = msg
        if batch is not None:
            quality[np.asarray(idx)] = serfiq_scores(
                model, batch, T=int(s.T), rate=float(s.rate), placement=s.placement,
                dropout=s.dropout, seed=seed + b,
            )
    return quality, status


def _identity_labels(params: Mapping[str, Any], rows: pd.DataFrame, method: str,
                     cfg: LabelsSettings) -> tuple[np.ndarray, np.ndarray]:
    """SDD-FIQA / CR-FIQA labels from the training-detector embeddings, per data set."""
    import warnings

    from aikd.data.io import read_vectors
    from aikd.fiqa.crfiqa import crfiqa_labels
    from aikd.fiqa.sddfiqa import sddfiqa_labels

    detector = training_detector(params)
    quality = np.full(len(rows), np.nan)
    status = np.full(len(rows), "ok", dtype=object)  # why a row has no label
    for ds, idx in rows.groupby("dataset").groups.items():
        meta, vectors = read_vectors(embeddings_path(params, str(ds), detector))
        pos = pd.Series(np.arange(len(meta)), index=meta["path"])
        sub = rows.loc[idx]
        have = sub["path"].isin(pos.index).to_numpy()
        status[np.asarray(idx)[~have]] = "no_embedding (see the embed stage's failures)"
        emb = vectors[pos[sub["path"][have]].to_numpy()]
        ids = sub["identity"][have].to_numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # singletons are counted by the stage
            if method == "sddfiqa":
                q = sddfiqa_labels(emb, ids, m=int(cfg.sddfiqa.m), k=int(cfg.sddfiqa.k),
                                   seed=global_seed(params))
            else:
                q = crfiqa_labels(emb, ids, variant=cfg.crfiqa.variant,
                                  centre=cfg.crfiqa.centre)
        quality[np.asarray(idx)[have]] = q
    return quality, status


def labels_stage(params: Mapping[str, Any], method: str) -> pd.DataFrame:
    """Pseudo quality labels of one FIQA method on the reference-aligned training images."""
    from aikd.data.validation import validate_labels
    from aikd.fiqa.csv_import import import_label_csv

    cfg = labels_settings(params)
    rows = training_rows(params)
    quality = np.full(len(rows), np.nan)
    status = np.full(len(rows), "ok", dtype=object)  # why a row has no label
    unmatched = pd.DataFrame()
    if method in ("sddfiqa", "crfiqa"):
        quality, status = _identity_labels(params, rows, method, cfg)
    elif method == "serfiq":
        quality, status = _serfiq_labels(params, rows, cfg.serfiq)
    elif method == "csv":
        src = cfg.csv.path
        if not src:
            raise UsageError("labels.csv.path is not set in params; set it with "
                             "-S labels.csv.path=<path,quality CSV>")
        imported, unmatched = import_label_csv(src, rows)
        quality = rows["path"].map(imported.set_index("path")["quality"]).to_numpy(float)
        status[np.isnan(quality)] = "not_in_csv"
    else:
        raise UsageError(f"unknown label method {method!r}; expected serfiq, sddfiqa, crfiqa, csv")
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
        gate = labels[~singleton]
    report = validate_labels(gate, method, float(cfg.min_coverage))
    report_path = report.write(out.with_name(f"{method}_validation.md"))
    q = labels["quality"]
    summary = {
        "count": int(q.notna().sum()),
        "missing": int(q.isna().sum()),
        "missing_singleton_identity": int((labels["status"] == "singleton_identity").sum()),
        "missing_other": int((q.isna() & (labels["status"] != "singleton_identity")).sum()),
        "min": float(q.min()),
        "median": float(q.median()),
        "max": float(q.max()),
        "unmatched_csv_rows": len(unmatched),
    }
    (out.with_name(f"{method}_summary.json")).write_text(json.dumps(summary, indent=2) + "\n")
    with stage_run("labels", params, run_name=f"labels-{method}",
                   log_params={"method": method, **dataclasses.asdict(cfg)}):
        mlflow.log_metrics({f"labels.{k}": float(v) for k, v in summary.items()})
        mlflow.log_artifact(str(report_path))
    print(f"labels {method}: {summary}")
    report.raise_for_failure()
    write_parquet_atomic(labels, out)
    return labels
