"""The score table on disk: ``aikd score``'s CSV, written chunk by chunk, and its counts."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from aikd.engine import EngineSettings, ray_map_chunks
from aikd.scoring.scorer import SCORE_STATUSES, QualityScorer

log = logging.getLogger(__name__)

MAX_LOGGED_FAILURES = 20


@dataclass
class ScoreSummary:
    """Counts per status and throughput of one scoring run."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SCORE_STATUSES, 0))
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, table: pd.DataFrame) -> None:
        for status, n in table["status"].value_counts().items():
            self.counts[str(status)] = self.counts.get(str(status), 0) + int(n)

    def line(self) -> str:
        rate = self.total / self.seconds if self.seconds > 0 else float("nan")
        parts = ", ".join(f"{k}={v}" for k, v in self.counts.items() if v or k == "ok")
        return f"scored {self.total} images ({parts}) in {self.seconds:.1f} s, {rate:.1f} images/s"

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.total, **self.counts, "seconds": round(self.seconds, 3)}


def _ray_score_fn(scorer: QualityScorer) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """The chunk function of a Ray actor: its own copy of the scorer (student and
    detector, loaded once per actor) scores each chunk."""
    return scorer.score_frame


def _ray_scores(scorer: QualityScorer, rows: pd.DataFrame, engine: EngineSettings,
                progress: bool) -> Iterator[pd.DataFrame]:
    """Score chunks of ``engine.batch_size`` rows on Ray actors, in input order (a chunk
    that finishes early waits for the ones before it, so the CSV keeps the input order)."""
    rows = rows.reset_index(drop=True)
    scorer.plan(len(rows))  # the backend `auto` picks for the whole job, not per chunk
    # What travels to the actors: no ONNX session or loaded detector (not picklable, and
    # each actor loads its own: the detector again by its registry name).
    shipped = copy.copy(scorer)
    shipped._session, shipped._detector, shipped.threads = None, None, engine.threads
    size = engine.batch_size
    chunks = [(k, rows.iloc[lo:lo + size]) for k, lo in enumerate(range(0, len(rows), size))]
    done: dict[int, pd.DataFrame] = {}
    nxt = 0
    for k, table in ray_map_chunks(chunks, partial(_ray_score_fn, shipped), engine,
                                   desc="score", progress=progress):
        done[k] = table.to_pandas()
        while nxt in done:
            yield done.pop(nxt)
            nxt += 1


def score_to_csv(
    scorer: QualityScorer, rows: pd.DataFrame, out: str | Path, *, progress: bool = True,
    engine: EngineSettings | None = None,
) -> ScoreSummary:
    """Score ``rows`` (``root, path``) chunk by chunk into ``out`` (CSV, written atomically:
    a temporary file renamed at the end) and return the per-status summary. ``engine``
    ``kind: ray`` scores the chunks on Ray actors (:mod:`aikd.engine`), same rows."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    summary = ScoreSummary()
    t0 = time.perf_counter()
    shown = 0
    with tmp.open("w", newline="") as fh:
        header = True
        tables = (_ray_scores(scorer, rows, engine, progress)
                  if engine is not None and engine.is_ray
                  else scorer.iter_scores(rows, progress=progress))
        for table in tables:
            table.to_csv(fh, header=header, index=False, float_format="%.8g")
            header = False
            summary.add(table)
            for r in table[table["status"] != "ok"].itertuples(index=False):
                # The CSV has every failure; the log names the first few so a broken
                # input (wrong folder, no faces at all) is obvious while it runs.
                if shown < MAX_LOGGED_FAILURES:
                    log.warning("%s: %s (%s)", r.path, r.status, r.message)
                elif shown == MAX_LOGGED_FAILURES:
                    log.warning("more failed images: see the status column of %s", out)
                shown += 1
    tmp.replace(out)
    summary.seconds = time.perf_counter() - t0
    return summary
