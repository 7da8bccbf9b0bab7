"""Run one detector over a manifest into a parquet table: resumable, failure-tolerant.

Landmark detection over a whole dataset takes from minutes (RetinaFace) to hours (MTCNN
on YTF), so the runner is built to be killed: results are flushed to a partial file every
``checkpoint_every`` images, a rerun skips every image already in the output or the partial
file, and the final table appears only complete (temp file + rename). A bad image or a
detector exception becomes a row with a status, never an aborted run.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aikd.data.images import ImageReadError, read_rgb
from aikd.data.io import write_parquet_atomic
from aikd.engine import EngineSettings, ray_map_chunks
from aikd.landmarks.base import BOX_COLUMNS, POINT_COLUMNS, Detection, LandmarkDetector
from aikd.landmarks.reference import ReferenceDetector
from aikd.landmarks.registry import get_detector

log = logging.getLogger(__name__)

KEY = ["dataset", "path"]
OUTPUT_COLUMNS: list[str] = [
    "path", "dataset", "detector", *POINT_COLUMNS, "score", *BOX_COLUMNS,
    "n_faces", "status", "message",
]
_FLOAT_COLUMNS = [*POINT_COLUMNS, "score", *BOX_COLUMNS]
_TEXT_COLUMNS = ["path", "dataset", "detector", "status", "message"]


def partial_path(out_path: str | Path) -> Path:
    """Where a run's checkpoints go: ``x.parquet`` -> ``x.partial.parquet``."""
    return Path(out_path).with_suffix(".partial.parquet")


def detection_row(path: str, dataset: str, detector: str, det: Detection) -> dict[str, Any]:
    """One output row; points and box are NaN unless the detection is ``ok``."""
    row: dict[str, Any] = {"path": path, "dataset": dataset, "detector": detector}
    ok = det.status == "ok" and det.points is not None
    pts = det.points.reshape(-1) if ok and det.points is not None else np.full(10, np.nan)
    row.update(zip(POINT_COLUMNS, (float(v) for v in pts), strict=True))
    row["score"] = float(det.score)
    box = det.box if det.box is not None else (math.nan,) * 4
    row.update(zip(BOX_COLUMNS, (float(v) for v in box), strict=True))
    row.update(n_faces=int(det.n_faces), status=det.status, message=str(det.message))
    return row


def _typed(rows: pd.DataFrame | list[dict[str, Any]]) -> pd.DataFrame:
    """Fixed column order and dtypes, so partial and final files concatenate cleanly."""
    df = pd.DataFrame(rows, columns=OUTPUT_COLUMNS) if isinstance(rows, list) else rows
    df = df.reindex(columns=OUTPUT_COLUMNS)
    df[_FLOAT_COLUMNS] = df[_FLOAT_COLUMNS].astype(np.float64)
    df["n_faces"] = df["n_faces"].fillna(0).astype(np.int64)
    for col in _TEXT_COLUMNS:
        df[col] = df[col].fillna("").astype(str).astype(object)
    return df.reset_index(drop=True)


def _checked(det: Any) -> Detection:
    """Turn a malformed detector answer into an ``error`` row instead of a bad table."""
    if not isinstance(det, Detection):
        return Detection.failed("error", f"detector returned {type(det).__name__}, not Detection")
    if det.status == "ok" and (det.points is None or not np.all(np.isfinite(det.points))):
        return Detection.failed("error", "status ok without finite landmarks", det.n_faces)
    return det


def _error(exc: BaseException) -> Detection:
    return Detection.failed("error", f"{type(exc).__name__}: {exc}")


def detect_batch_safely(
    detector: LandmarkDetector, images: Sequence[np.ndarray]
) -> list[Detection]:
    """One detection per image, never raising: the batch call, and if it fails, image by
    image, so one image that crashes the detector only costs its own row."""
    try:
        dets = detector.detect_batch(images)
        if len(dets) != len(images):
            raise RuntimeError(f"detect_batch returned {len(dets)} results for {len(images)}")
        return [_checked(d) for d in dets]
    except Exception as batch_exc:  # noqa: BLE001 - per-image retry isolates the culprit
        log.debug("batch detection failed (%s); retrying per image", batch_exc)
        out = []
        for img in images:
            try:
                out.append(_checked(detector.detect(img)))
            except Exception as exc:  # noqa: BLE001 - a detector failure is a row, not a crash
                out.append(_error(exc))
        return out


def _process(
    detector: LandmarkDetector, rows: pd.DataFrame, batch_size: int
) -> Iterator[list[dict[str, Any]]]:
    """Yield output rows chunk by chunk (one chunk = up to ``batch_size`` images)."""
    name = detector.name
    for start in range(0, len(rows), batch_size):
        chunk = rows.iloc[start : start + batch_size]
        results: list[Detection | None] = [None] * len(chunk)
        if isinstance(detector, ReferenceDetector):
            for j, (root, path, dataset) in enumerate(
                zip(chunk["root"], chunk["path"], chunk["dataset"], strict=True)
            ):
                results[j] = detector.lookup(str(dataset), str(root), str(path))
        else:
            images, slots = [], []
            for j, (root, path) in enumerate(zip(chunk["root"], chunk["path"], strict=True)):
                try:
                    images.append(read_rgb(Path(str(root)) / str(path)))
                    slots.append(j)
                except ImageReadError as exc:
                    results[j] = Detection.failed("unreadable", str(exc))
                except Exception as exc:  # noqa: BLE001 - e.g. an OS error on a network share
                    results[j] = Detection.failed(
                        "unreadable", f"{Path(str(root)) / str(path)}: {type(exc).__name__}: {exc}"
                    )
            if images:
                for j, det in zip(slots, detect_batch_safely(detector, images), strict=True):
                    results[j] = det
        yield [
            detection_row(str(path), str(dataset), name, det)
            for path, dataset, det in zip(chunk["path"], chunk["dataset"], results, strict=True)
            if det is not None
        ]


def _ray_detector(detector: str | LandmarkDetector, detector_kwargs: dict[str, Any],
                  batch_size: int) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """The chunk function of a Ray actor: the detector is created (its model loaded) once
    per actor, then every chunk gives one typed row per image, as :func:`_process` does."""
    det = detector if isinstance(detector, LandmarkDetector) else get_detector(
        detector, **detector_kwargs)
    if det.reads_pixels:
        _ = det.model

    def fn(rows: pd.DataFrame) -> pd.DataFrame:
        return _typed([row for chunk in _process(det, rows, batch_size) for row in chunk])

    return fn


def _ray_process(
    detector: str | LandmarkDetector, detector_kwargs: dict[str, Any], pending: pd.DataFrame,
    batch_size: int, engine: EngineSettings, progress: bool,
) -> Iterator[list[dict[str, Any]]]:
    """:func:`_process` on Ray: chunks of ``engine.batch_size`` images on the actors,
    yielded (as output rows) in the order they finish."""
    kwargs = dict(detector_kwargs)
    if "threads" in kwargs:  # each actor gets the engine's threads, not the stage's
        kwargs["threads"] = engine.threads
    size = engine.batch_size
    chunks = [(k, pending.iloc[lo:lo + size])
              for k, lo in enumerate(range(0, len(pending), size))]
    name = detector if isinstance(detector, str) else detector.name
    factory = functools.partial(_ray_detector, detector, kwargs, batch_size)
    for _, table in ray_map_chunks(chunks, factory, engine, desc=f"landmarks {name}",
                                   progress=progress):
        yield _typed(table.to_pandas()).to_dict("records")


def _load_done(out_path: Path, detector: str) -> pd.DataFrame:
    """Rows finished by earlier runs: the final file and/or the partial checkpoint."""
    tables = []
    for p in (out_path, partial_path(out_path)):
        if p.is_file():
            t = pd.read_parquet(p)
            missing = [c for c in OUTPUT_COLUMNS if c not in t.columns]
            if missing:
                raise ValueError(f"{p}: not a landmark table (missing columns {missing})")
            other = set(t["detector"].astype(str)) - {detector}
            if other:
                raise ValueError(
                    f"{p} holds results of detector(s) {sorted(other)}, not {detector!r}; "
                    "use another out_path"
                )
            tables.append(_typed(t))
    if not tables:
        return _typed([])
    # The partial file is newer than the final one: keep its row when a key is in both.
    done = pd.concat(tables, ignore_index=True)
    return done.drop_duplicates(subset=KEY, keep="last").reset_index(drop=True)


def run_landmarks(
    manifest: pd.DataFrame,
    detector: str | LandmarkDetector,
    out_path: str | Path,
    *,
    batch_size: int = 32,
    checkpoint_every: int = 500,
    progress: bool = True,
    retry_errors: bool = True,
    engine: EngineSettings | None = None,
    **detector_kwargs: Any,
) -> pd.DataFrame:
    """Detect landmarks for every manifest row; return the table in manifest order.

    ``manifest`` needs ``root``, ``path`` and ``dataset`` (images are ``root/path``). The
    parquet at ``out_path`` has `OUTPUT_COLUMNS`. Rows already in ``out_path`` or in its
    partial file are reused (``error`` rows are retried unless ``retry_errors=False``);
    rows of the file that are not in this manifest are kept after the manifest's rows, so
    running on a subset never discards earlier work. ``detector`` is a registry name (its
    kwargs in ``detector_kwargs``) or a ready instance. The model is loaded before the
    first image, so a broken installation fails at once instead of filling a table with
    errors. The reference detector reads its table, not the image files. ``engine``
    ``kind: ray`` detects on Ray actors (:mod:`aikd.engine`), each loading the detector
    once; checkpoints, resume and the status rows are the same.
    """
    missing = [c for c in ("root", "path", "dataset") if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}")
    if batch_size < 1 or checkpoint_every < 1:
        raise ValueError("batch_size and checkpoint_every must be >= 1")
    rows = manifest[["root", "path", "dataset"]].astype(str).reset_index(drop=True)
    dup = rows.duplicated(subset=KEY)
    if dup.any():
        raise ValueError(f"manifest has {int(dup.sum())} duplicate (dataset, path) rows")

    det = detector if isinstance(detector, LandmarkDetector) else get_detector(
        detector, **detector_kwargs
    )
    out_path = Path(out_path)
    partial = partial_path(out_path)
    done = _load_done(out_path, det.name)
    reuse = done[done["status"] != "error"] if retry_errors else done
    done_keys = pd.MultiIndex.from_frame(reuse[KEY])
    pending = rows[~pd.MultiIndex.from_frame(rows[KEY]).isin(done_keys)]
    if len(rows) > len(pending):
        log.info("%s: %d of %d images already done", out_path, len(rows) - len(pending), len(rows))

    new: list[dict[str, Any]] = []
    if len(pending) and engine is not None and engine.is_ray:
        source = _ray_process(detector, detector_kwargs, pending, batch_size, engine, progress)
        new = _collect(source, done, partial, len(pending), det.name, checkpoint_every,
                       progress=False)  # the Ray engine shows its own bars
    elif len(pending):
        if det.reads_pixels:
            _ = det.model  # load now: a missing model file is a setup error, not N rows
        new = _collect(_process(det, pending, batch_size), done, partial, len(pending),
                       det.name, checkpoint_every, progress)
    elif out_path.is_file() and not partial.is_file():
        return _in_manifest_order(done, rows)

    everything = _merged(done, new)
    ordered = _in_manifest_order(everything, rows)
    in_manifest = pd.MultiIndex.from_frame(everything[KEY]).isin(
        pd.MultiIndex.from_frame(rows[KEY])
    )
    extra = everything[~in_manifest]
    if len(extra):
        log.info("%s: keeping %d rows of images not in this manifest", out_path, len(extra))
    write_parquet_atomic(_typed(pd.concat([ordered, extra], ignore_index=True)), out_path)
    partial.unlink(missing_ok=True)
    return ordered


def _collect(
    source: Iterator[list[dict[str, Any]]], done: pd.DataFrame, partial: Path, total: int,
    name: str, checkpoint_every: int, progress: bool,
) -> list[dict[str, Any]]:
    """Rows of the images not done yet, flushed (with ``done``) to ``partial`` every
    ``checkpoint_every`` images and when interrupted."""
    from tqdm import tqdm

    new: list[dict[str, Any]] = []
    bar = tqdm(total=total, unit="img", desc=f"landmarks {name}", disable=not progress)
    since_flush = 0
    try:
        for chunk_rows in source:
            new.extend(chunk_rows)
            bar.update(len(chunk_rows))
            since_flush += len(chunk_rows)
            if since_flush >= checkpoint_every:
                write_parquet_atomic(_merged(done, new), partial)
                since_flush = 0
    except BaseException:
        if new:  # interrupted (Ctrl-C, OOM...): keep what was computed
            write_parquet_atomic(_merged(done, new), partial)
        raise
    finally:
        bar.close()
    return new


def _merged(done: pd.DataFrame, new: list[dict[str, Any]]) -> pd.DataFrame:
    """Earlier rows plus this run's; a recomputed image's new row replaces its old one."""
    table = pd.concat([done, _typed(new)], ignore_index=True) if new else done
    return _typed(table.drop_duplicates(subset=KEY, keep="last"))


def _in_manifest_order(table: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """The table's rows for the manifest's images, in manifest order."""
    keyed = table.drop_duplicates(subset=KEY, keep="last").set_index(KEY)
    idx = pd.MultiIndex.from_frame(rows[KEY])
    return keyed.reindex(idx).reset_index()[OUTPUT_COLUMNS].reset_index(drop=True)
