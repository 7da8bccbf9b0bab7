"""Where each stage writes its outputs: the pipeline's file layout, in one light module.

Stages, the tuning driver and scripts locate each other's files through these functions;
`dvc.yaml` spells out the same paths as outs and deps (a stage that writes elsewhere fails
`dvc repro`, which checks that every declared output exists: the smoke run in CI).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aikd.config import section


def manifest_path(params: Mapping[str, Any], dataset: str) -> Path:
    return Path(section(params, "manifest")["out_dir"]) / f"{dataset}.parquet"


def landmarks_path(params: Mapping[str, Any], dataset: str, detector: str) -> Path:
    """``<out_dir>/<detector>/<dataset>.parquet``: one folder per detector, so a stage can
    depend on "this detector's landmarks of every data set" (dvc.yaml)."""
    return Path(section(params, "landmarks")["out_dir"]) / detector / f"{dataset}.parquet"


def embeddings_path(params: Mapping[str, Any], dataset: str, detector: str,
                    backbone: str | None = None) -> Path:
    """``<dir>/<detector>/<dataset>_<backbone>.parquet``. The training network
    (``embed.backbone``, the default) lives under ``embed.out_dir``; any other network (the
    cross-model evaluation) under ``cross_model.out_dir``, so that adding one never changes
    the embeddings folder that labels and training depend on."""
    cfg = section(params, "embed")
    net = backbone or str(cfg["backbone"])
    root = cfg["out_dir"] if net == cfg["backbone"] else section(params, "cross_model")["out_dir"]
    return Path(root) / detector / f"{dataset}_{net}.parquet"


def labels_path(params: Mapping[str, Any], method: str) -> Path:
    return Path(section(params, "labels")["out_dir"]) / f"{method}.parquet"


def pairs_path(params: Mapping[str, Any], benchmark: str) -> Path:
    return Path(section(params, "evaluate")["pairs_dir"]) / f"{benchmark}.parquet"


def quality_path(params: Mapping[str, Any], dataset: str, detector: str) -> Path:
    return Path(section(params, "quality")["out_dir"]) / dataset / f"{detector}.parquet"
