"""A per-row table built chunk by chunk, each chunk kept as a shard until the whole is done.

The embed and quality stages run for minutes to hours over thousands of images; if one
is stopped, the chunks it finished stay as parquet shards beside the output
(``<out>.shards/00000.parquet`` ...) and a rerun computes only the missing ones. A
signature, when given, guards the shards against reuse by a different computation.
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

log = logging.getLogger("aikd")

T = TypeVar("T")

#: Computes the shard of rows ``lo:hi``, advancing the progress bar as it goes.
ChunkFn = Callable[[int, int, tqdm], pd.DataFrame | pa.Table]


def shard_dir_of(out: Path) -> Path:
    """Where the shards of ``out`` are kept while it is being built."""
    return out.with_name(out.name + ".shards")


def _open_shard_dir(shard_dir: Path, signature: str | None) -> None:
    if signature is None:
        shard_dir.mkdir(parents=True, exist_ok=True)
        return
    sig_file = shard_dir / "signature.txt"
    if shard_dir.exists() and (not sig_file.is_file() or sig_file.read_text() != signature):
        log.warning("%s: shards of another scorer set; starting over", shard_dir)
        shutil.rmtree(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    sig_file.write_text(signature)


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
    _open_shard_dir(shard_dir, signature)
    n_chunks = (n_rows + chunk_size - 1) // chunk_size
    shards = [shard_dir / f"{c:05d}.parquet" for c in range(n_chunks)]
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
