"""DVC stage ``cross_embed@<dataset>-<detector>-<backbone>``: a second FR network's
embeddings of the validation and test faces, aligned to its own template."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from aikd.config import section
from aikd.cross_model import cross_model_settings, failures_path, mark_unavailable
from aikd.errors import UsageError
from aikd.paths import embeddings_path, landmarks_path, manifest_path


def cross_embed_stage(params: Mapping[str, Any], dataset: str, detector: str,
                      backbone: str) -> Path:
    """Embed the ``cross_model.splits`` faces that ``detector`` found with ``backbone``
    (resumable, as ``embed``; local or Ray as ``engine`` says). Weights not on disk: an
    empty table and the reason in ``<table>_failures.csv``, so the DAG still runs and the
    report says the network was not evaluated."""
    import mlflow

    from aikd.embed import embed_table
    from aikd.engine import engine_settings
    from aikd.models.registry import load_backbone
    from aikd.tracking import stage_run

    cfg = cross_model_settings(params)
    if backbone == section(params, "embed")["backbone"]:
        raise UsageError(f"cross_embed: {backbone} is embed.backbone, the training network; "
                         "the embed stage embeds with it")
    if backbone not in cfg.backbones:
        raise UsageError(f"cross_embed: {backbone!r} is not in params cross_model.backbones "
                         f"{cfg.backbones}")
    out = embeddings_path(params, dataset, detector, backbone)
    try:
        model = load_backbone(backbone)
    except FileNotFoundError as exc:
        mark_unavailable(out, f"{backbone} not evaluated: {exc}")
        print(f"cross_embed {dataset}/{detector}/{backbone}: weights missing ({exc}); "
              "wrote an empty table, the report says the network was not evaluated")
        return out
    torch.set_num_threads(cfg.threads)
    model = model.eval().to(memory_format=torch.channels_last)
    manifest = pd.read_parquet(manifest_path(params, dataset))
    manifest = manifest[manifest["split"].isin(cfg.splits)]
    marks = pd.read_parquet(landmarks_path(params, dataset, detector))
    rows = manifest[["root", "path"]].merge(marks[marks["status"] == "ok"], on="path")
    meta, _, failed = embed_table(model, rows, out, batch_size=cfg.batch_size,
                                  workers=cfg.workers, engine=engine_settings(params))
    failed.to_csv(failures_path(out), index=False)
    with stage_run("cross_embed", params,
                   run_name=f"cross_embed-{dataset}-{detector}-{backbone}",
                   log_params={"dataset": dataset, "detector": detector, "backbone": backbone,
                               **dataclasses.asdict(cfg)}):
        mlflow.log_metrics({"cross_embed.images": len(meta),
                            "cross_embed.failures": len(failed)})
    print(f"cross_embed {dataset}/{detector}/{backbone}: {len(meta)} faces "
          f"({', '.join(cfg.splits)}), {len(failed)} failures")
    return out
