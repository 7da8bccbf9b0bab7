"""A per-row table built chunk by chunk, each chunk kept as a shard until the whole is done.

The embed and quality stages run for minutes to hours over thousands of images; if one
is stopped, the chunks it finished stay as parquet shards beside the output
(``<out>.shards/00000.parquet`` ...) and a rerun computes only the missing ones. A
signature, when given, guards the shards against reuse by a different computation.
:func:`build_in_shards_ray` builds the same shards on a Ray cluster (:mod:`aikd.engine`).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from aikd.data.io import write_parquet_atomic
from aikd.engine import ChunkFnFactory, EngineSettings, ray_map_chunks

log = logging.getLogger("aikd")

T = TypeVar("T")

#: Computes the shard of rows ``lo:hi``, advancing the progress bar as it goes.
ChunkFn = Callable[[int, int, tqdm], pd.DataFrame | pa.Table]


def shard_dir_of(out: Path) -> Path:
    """Where the shards of ``out`` are kept while it is being built."""
    return out.with_name(out.name + ".shards")


def _open_shard_dir(shard_dir: Path, signature: str | None, chunk_size: int) -> None:
    """Create the shard folder, emptying one left by another computation or cut into
    chunks of another size (the engines may differ: shard k must mean the same rows)."""
    sig_file, size_file = shard_dir / "signature.txt", shard_dir / "chunk_size.txt"
    if signature is not None and shard_dir.exists() and (
            not sig_file.is_file() or sig_file.read_text() != signature):
        log.warning("%s: shards of another scorer set; starting over", shard_dir)
        shutil.rmtree(shard_dir)
    # No chunk_size.txt: shards of a run before it was written, always in the default size.
    if size_file.is_file() and size_file.read_text() != str(chunk_size):
        log.warning("%s: shards of %s rows, not %d; starting over", shard_dir,
                    size_file.read_text(), chunk_size)
        shutil.rmtree(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    size_file.write_text(str(chunk_size))
    if signature is not None:
        sig_file.write_text(signature)


def _shard_files(shard_dir: Path, n_rows: int, chunk_size: int) -> list[Path]:
    n_chunks = (n_rows + chunk_size - 1) // chunk_size
    return [shard_dir / f"{c:05d}.parquet" for c in range(n_chunks)]


def build_in_shards(
    out: str | Path,
    n_rows: int,
    chunk_size: int,
    make_chunk: ChunkFn,
    merge: Callable[[list[Path]], T],
    *,
    desc: str,
    signature: str | None = None,
    progress: bool = True,
) -> T:
    """Build ``out`` from ``n_rows`` rows in chunks of ``chunk_size``, resumably.

    ``make_chunk(lo, hi, bar)`` returns the shard of rows ``lo:hi``; shards finished by an
    earlier, interrupted call are kept and skipped. ``merge(shard_files)`` reads them in
    order and writes ``out``; then the shards are removed and its result is returned.
    """
    out = Path(out)
    shard_dir = shard_dir_of(out)
    _open_shard_dir(shard_dir, signature, chunk_size)
    shards = _shard_files(shard_dir, n_rows, chunk_size)
    with tqdm(total=n_rows, desc=desc, unit="img", disable=not progress) as bar:
        for c, shard in enumerate(shards):
            lo, hi = c * chunk_size, min((c + 1) * chunk_size, n_rows)
            if shard.is_file():  # finished before an interruption
                bar.update(hi - lo)
                continue
            write_parquet_atomic(make_chunk(lo, hi, bar), shard)
    result = merge(shards)
    shutil.rmtree(shard_dir)
    return result


def build_in_shards_ray(
    out: str | Path,
    rows: pd.DataFrame,
    make_fn: ChunkFnFactory,
    merge: Callable[[list[Path]], T],
    engine: EngineSettings,
    *,
    desc: str,
    signature: str | None = None,
    progress: bool = True,
) -> T:
    """:func:`build_in_shards` on Ray (:func:`aikd.engine.ray_map_chunks`): chunks of
    ``engine.batch_size`` rows, each computed by ``make_fn()`` in a Ray actor and written
    as its shard by this process as soon as it comes back. Same shard folder and names,
    so a killed run, rerun, computes only the shards it had not written."""
    out = Path(out)
    shard_dir = shard_dir_of(out)
    size = engine.batch_size
    _open_shard_dir(shard_dir, signature, size)
    shards = _shard_files(shard_dir, len(rows), size)
    todo = [(c, rows.iloc[c * size:(c + 1) * size]) for c, shard in enumerate(shards)
            if not shard.is_file()]
    if len(todo) < len(shards):
        log.info("%s: %d of %d shards already written", shard_dir, len(shards) - len(todo),
                 len(shards))
    for c, table in ray_map_chunks(todo, make_fn, engine, desc=desc, progress=progress):
        write_parquet_atomic(table, shards[c])
    result = merge(shards)
    shutil.rmtree(shard_dir)
    return result
