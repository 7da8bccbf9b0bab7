"""DVC stage ``embed@<dataset>-<detector>``: FR embeddings of the faces a detector found."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from aikd.config import from_section
from aikd.embed import embed_table
from aikd.engine import engine_settings
from aikd.paths import embeddings_path, landmarks_path, manifest_path


@dataclass(frozen=True)
class EmbedSettings:
    """params.yaml ``embed``: the FR backbone and how the embedding is run."""

    backbone: str      # the FR model every stage embeds with (dlib_resnet, iresnet50, ...)
    out_dir: str       # where the embedding tables go (read by aikd.paths)
    batch_size: int
    workers: int       # image decoding + alignment processes beside the network
    threads: int       # torch intra-op threads
    #: The backbone's weights file (an insightface ``backbone.pth`` for iresnet50/100);
    #: None: load_backbone's default (dlib's trained model; random init for iresnets).
    backbone_weights: str | None = None


def embed_stage(params: Mapping[str, Any], dataset: str, detector: str) -> Path:
    """DVC stage ``embed@<dataset>-<detector>``: embed every face a detector found, aligned
    to the backbone's template (resumable)."""
    import mlflow

    from aikd.models.registry import load_backbone
    from aikd.tracking import stage_run

    cfg = from_section(EmbedSettings, params, "embed")
    torch.set_num_threads(cfg.threads)
    manifest = pd.read_parquet(manifest_path(params, dataset))
    marks = pd.read_parquet(landmarks_path(params, dataset, detector))
    rows = manifest[["root", "path"]].merge(marks[marks["status"] == "ok"], on="path")
    model = load_backbone(cfg.backbone, cfg.backbone_weights).eval().to(
        memory_format=torch.channels_last)
    out = embeddings_path(params, dataset, detector)
    engine = engine_settings(params)
    meta, vectors, failed = embed_table(model, rows, out, batch_size=cfg.batch_size,
                                        workers=cfg.workers, engine=engine)
    failed.to_csv(out.with_name(out.stem + "_failures.csv"), index=False)
    with stage_run("embed", params, run_name=f"embed-{dataset}-{detector}",
                   log_params={"dataset": dataset, "detector": detector,
                               **dataclasses.asdict(cfg), "engine": engine.kind}):
        mlflow.log_metrics({"embed.images": len(meta), "embed.failures": len(failed),
                            "embed.skipped_no_landmarks": int((marks["status"] != "ok").sum())})
    print(f"embed {dataset}/{detector}: {len(meta)} faces, {len(failed)} failures")
    return out
