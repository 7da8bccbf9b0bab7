"""DVC stage ``quality@<dataset>-<detector>``: every quality method on the evaluation faces.

Columns: every trained model, one per distill run and training seed (``<method>-<variant>@s
<seed>``, ``aikd.naming.seeded_name``), ``<method>-B`` for methods applied
directly to the images (``quality.direct``: SER-FIQ needs no training), and the
``quality.baselines`` anchors (``flip``, ``sharpness``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from aikd.config import from_mapping, from_section, section
from aikd.embed.stage import EmbedSettings
from aikd.engine import engine_settings
from aikd.evaluation.benchmarks import benchmark_pairs, benchmarks_of
from aikd.evaluation.tables import method_columns
from aikd.landmarks.base import POINT_COLUMNS
from aikd.paths import landmarks_path, manifest_path, quality_path
from aikd.quality.scorers import ColumnScorer, Scorer, SharedTrunkScorer
from aikd.quality.table import score_faces


@dataclass(frozen=True)
class QualitySettings:
    """params.yaml ``quality``."""

    out_dir: str                # where the quality tables go (read by aikd.paths)
    direct: list[str]           # methods applied to the images as they are (serfiq)
    baselines: list[str]        # training-free anchors: flip, sharpness
    serfiq: dict[str, Any]      # overrides of labels.serfiq for SER-FIQ applied directly
    batch_size: int
    workers: int
    threads: int


@dataclass(frozen=True)
class SerfiqSettings:
    """SER-FIQ's settings: params.yaml ``labels.serfiq`` with ``quality.serfiq`` on top."""

    T: int
    rate: float
    placement: str
    dropout: str


BASELINES = ("flip", "sharpness")


def eval_rows(params: Mapping[str, Any], dataset: str) -> pd.DataFrame:
    """The images the benchmarks of ``dataset`` compare (``root``, ``path``), sorted."""
    manifest = pd.read_parquet(manifest_path(params, dataset))
    used: set[str] = set()
    for bench in benchmarks_of(params, dataset):
        pairs = benchmark_pairs(params, bench)
        used |= set(pairs["path_a"]) | set(pairs["path_b"])
    rows = manifest[manifest["path"].isin(used)]
    missing = used - set(rows["path"])
    if missing:
        raise ValueError(f"{len(missing)} pair images are not in the {dataset} manifest, e.g. "
                         f"{sorted(missing)[:3]}")
    return rows[["root", "path"]].sort_values("path").reset_index(drop=True)


def _serfiq_scorer(params: Mapping[str, Any], cfg: QualitySettings,
                   backbone: torch.nn.Module) -> tuple[ColumnScorer, dict[str, Any]]:
    from aikd.fiqa.serfiq import serfiq_scores

    values = {**section(params, "labels")["serfiq"], **(cfg.serfiq or {})}
    s = from_mapping(SerfiqSettings, values, "labels.serfiq + quality.serfiq")
    seed = int(params["seed"])
    scorer = ColumnScorer("serfiq-B", lambda x: serfiq_scores(
        backbone, x, T=s.T, rate=s.rate, placement=s.placement, dropout=s.dropout, seed=seed))
    return scorer, dataclasses.asdict(s)


def build_scorers(params: Mapping[str, Any]) -> tuple[list[Scorer], str, str]:
    """(scorers, template, signature) for the quality stage (columns: see the module)."""
    from aikd.data.io import file_md5
    from aikd.distill.model import load_quality_model
    from aikd.distill.stage import run_dir, trained_models
    from aikd.fiqa.baselines import sharpness
    from aikd.models.registry import load_backbone

    cfg = from_section(QualitySettings, params, "quality")
    embed = from_section(EmbedSettings, params, "embed")
    sig: dict[str, Any] = {"backbone": embed.backbone}
    if embed.backbone_weights is not None:  # absent by default: the signature is unchanged
        sig["backbone_weights"] = file_md5(Path(embed.backbone_weights))
    backbone = load_backbone(embed.backbone, embed.backbone_weights).eval().to(
        memory_format=torch.channels_last)
    templates = {backbone.template}
    models = {}
    for column, (run, seed) in trained_models(params).items():
        path = run_dir(params, run, seed) / "model.pt"
        models[column] = load_quality_model(path).to(memory_format=torch.channels_last)
        templates.add(models[column].template)
        sig[column] = file_md5(path)
    baselines = list(cfg.baselines or [])
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise ValueError(f"quality.baselines: unknown {sorted(unknown)}; expected flip, sharpness")
    scorers: list[Scorer] = [SharedTrunkScorer(backbone, models, flip="flip" in baselines)]
    for method in cfg.direct or []:
        if method != "serfiq":
            raise ValueError(f"quality.direct: {method!r} cannot be applied directly; only "
                             "'serfiq' needs no training")
        scorer, sig["serfiq-B"] = _serfiq_scorer(params, cfg, backbone)
        scorers.append(scorer)
    if "sharpness" in baselines:
        scorers.append(ColumnScorer("sharpness", lambda x: sharpness(
            x.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy())))
    sig["baselines"] = baselines
    if len(templates) != 1:
        raise ValueError(f"quality models use different templates {sorted(templates)}; score "
                         "them in separate stages")
    return scorers, templates.pop(), json.dumps(sig, sort_keys=True, default=str)


def quality_stage(params: Mapping[str, Any], dataset: str, detector: str) -> pd.DataFrame:
    """Write data/quality/<dataset>/<detector>.parquet for every quality method."""
    import mlflow

    from aikd.tracking import stage_run

    cfg = from_section(QualitySettings, params, "quality")
    torch.set_num_threads(cfg.threads)
    rows = eval_rows(params, dataset)
    marks = pd.read_parquet(landmarks_path(params, dataset, detector))
    marks = marks[marks["status"] == "ok"].drop_duplicates("path")
    rows = rows.merge(marks[["path", *POINT_COLUMNS]], on="path", how="left")
    scorers, template, signature = build_scorers(params)
    out = quality_path(params, dataset, detector)
    engine = engine_settings(params)
    with torch.inference_mode():
        table = score_faces(rows, scorers, template, out, signature=signature,
                            batch_size=cfg.batch_size, workers=cfg.workers, engine=engine)
    counts = table["status"].where(table["status"].isin(["ok", "no_landmarks"]),
                                   "error").value_counts().to_dict()
    with stage_run("quality", params, run_name=f"quality-{dataset}-{detector}",
                   log_params={"dataset": dataset, "detector": detector,
                               "methods": method_columns(table), **dataclasses.asdict(cfg),
                               "engine": engine.kind}):
        mlflow.log_metrics({f"quality.{k}": float(v) for k, v in counts.items()})
    print(f"quality {dataset}/{detector}: {len(table)} images {counts}; "
          f"methods {method_columns(table)}")
    return table
