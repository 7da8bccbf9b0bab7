"""Where the per-image stages run: in this process (``local``) or on a Ray cluster (``ray``).

The landmarks, embed and quality stages and ``aikd score`` cut their rows into chunks and
compute each chunk with a function that needs a loaded network or detector. The local
engine runs those chunks here, one after the other (the code path of every stage as it
was). The Ray engine hands the same chunks to a Ray Data pipeline: one block per chunk
(``from_pandas``) -> ``map_batches`` on a pool of ``num_workers`` actors, each of which
builds the chunk function (loads the model) once -> the driver gets each chunk's result
back and writes it (shard, checkpoint or CSV) as it arrives, so a killed run keeps what
was finished. The driver does the writing so that only the images, not the output
folder, have to be visible to the workers of a real cluster.

Ray is imported inside the functions here: the local engine never imports it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from aikd.config import from_section

ENGINES = ("local", "ray")
#: Row bookkeeping columns added to every chunk on its way through Ray (dropped after).
CHUNK_COL, ROW_COL = "_aikd_chunk", "_aikd_row"

#: The function that computes one chunk: its input rows -> one output row per input row.
ChunkFn = Callable[[pd.DataFrame], pd.DataFrame | pa.Table]
#: Builds a :data:`ChunkFn` inside a worker (loads the model once per actor). Pickled with
#: cloudpickle, so a ``functools.partial`` or a closure over a model both travel.
ChunkFnFactory = Callable[[], ChunkFn]


@dataclass(frozen=True)
class EngineSettings:
    """params.yaml ``engine``: how the per-image stages are run."""

    kind: str = "local"            # local | ray
    address: str | None = None     # Ray cluster address; None: RAY_ADDRESS, else a local Ray
    num_workers: int = 2           # Ray actors, each with its own copy of the model
    batch_size: int = 256          # rows per Ray task (and per shard of a Ray-built table)
    threads: int = 1               # torch / detector intra-op threads per Ray actor

    def __post_init__(self) -> None:
        if self.kind not in ENGINES:
            raise ValueError(f"engine.kind must be one of {ENGINES}, got {self.kind!r}")
        if self.num_workers < 1 or self.batch_size < 1 or self.threads < 1:
            raise ValueError("engine.num_workers, batch_size and threads must be >= 1")

    @property
    def is_ray(self) -> bool:
        return self.kind == "ray"


def engine_settings(params: dict[str, Any] | Any) -> EngineSettings:
    """The ``engine`` section, or the local engine when params has none (outside a
    project, e.g. ``aikd score`` without a params.yaml)."""
    if not params or "engine" not in params:
        return EngineSettings()
    return from_section(EngineSettings, params, "engine")


def ray_address(settings: EngineSettings) -> str | None:
    """``RAY_ADDRESS`` overrides ``engine.address``; None starts a Ray on this machine."""
    return os.environ.get("RAY_ADDRESS") or settings.address


def connect(settings: EngineSettings) -> None:
    """Join the cluster (or start a local one) unless this process already did."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return
    address = ray_address(settings)
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING"}
    if address is None:  # a Ray of our own: just the CPUs the actors are meant to use
        kwargs["num_cpus"] = settings.num_workers * settings.threads
        # Its workers inherit this environment: make them import the aikd this process
        # runs (a checkout need not be the installed copy).
        here = str(Path(__file__).resolve().parents[1])
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if here not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, *paths]))
    ray.init(address=address, **kwargs)


class _ChunkActor:
    """One Ray actor: builds the chunk function once, then computes chunk after chunk."""

    def __init__(self, make_fn: ChunkFnFactory, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.fn = make_fn()

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        out = []
        # One block is one chunk; a batch holding several (or part of one) still works.
        for chunk, rows in batch.groupby(CHUNK_COL, sort=False):
            table = self.fn(rows.drop(columns=[CHUNK_COL, ROW_COL]).reset_index(drop=True))
            if isinstance(table, pd.DataFrame):
                table = pa.Table.from_pandas(table, preserve_index=False)
            if table.num_rows != len(rows):
                raise RuntimeError(f"chunk function returned {table.num_rows} rows for "
                                   f"{len(rows)}")
            table = table.append_column(CHUNK_COL, pa.array([chunk] * len(rows), pa.int64()))
            out.append(table.append_column(ROW_COL, pa.array(rows[ROW_COL].to_numpy())))
        return pa.concat_tables(out)


def ray_map_chunks(
    chunks: Sequence[tuple[int, pd.DataFrame]],
    make_fn: ChunkFnFactory,
    settings: EngineSettings,
    *,
    desc: str,
    progress: bool = True,
) -> Iterator[tuple[int, pa.Table]]:
    """Compute ``(chunk id, rows)`` chunks on Ray; yield ``(chunk id, result)`` as each
    chunk completes (in any order), its rows in input order.

    A Ray Data pipeline: ``from_pandas`` (one block per chunk) -> ``map_batches`` with an
    actor pool of ``settings.num_workers`` actors (``settings.threads`` CPUs each) running
    ``make_fn()``. Progress: Ray Data's bars and a tqdm bar of the completed images.
    """
    chunks = [(k, rows) for k, rows in chunks if len(rows)]
    if not chunks:
        return
    connect(settings)
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    blocks = [rows.reset_index(drop=True).assign(**{CHUNK_COL: k, ROW_COL: range(len(rows))})
              for k, rows in chunks]
    sizes = {k: len(rows) for k, rows in chunks}
    ds = ray.data.from_pandas(blocks).map_batches(
        _ChunkActor,
        fn_constructor_kwargs={"make_fn": make_fn, "threads": settings.threads},
        batch_size=None,  # a whole block, i.e. one chunk, per call
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=settings.num_workers),
        num_cpus=settings.threads,
    )
    pending: dict[int, list[pa.Table]] = {}
    got: dict[int, int] = {}
    with tqdm(total=sum(sizes.values()), desc=desc, unit="img", disable=not progress) as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for k in pc.unique(batch.column(CHUNK_COL)).to_pylist():
                part = batch.filter(pc.equal(batch.column(CHUNK_COL), k))
                pending.setdefault(k, []).append(part)
                got[k] = got.get(k, 0) + part.num_rows
                if got[k] < sizes[k]:
                    continue
                table = pa.concat_tables(pending.pop(k)).sort_by(ROW_COL)
                bar.update(sizes[k])
                yield k, table.drop([CHUNK_COL, ROW_COL])
    missing = set(sizes) - {k for k in got if got[k] >= sizes[k]}
    if missing:
        raise RuntimeError(f"Ray returned no result for chunks {sorted(missing)}")


__all__ = ["ENGINES", "ChunkFn", "ChunkFnFactory", "EngineSettings", "connect",
           "engine_settings", "ray_address", "ray_map_chunks"]
