"""Scoring raw, unaligned photos: read -> detect 5 landmarks -> align -> distilled student.

This is the inference path behind ``aikd score`` and the registered MLflow model
(:mod:`aikd.registry`). It only chains the project's building blocks (``read_rgb``, a
``LandmarkDetector``, ``align_to_template``, ``to_float_input`` and the
``QualityModel``), so a photo scored here gets exactly the quality ``predict_quality``
gives the same image aligned from the same landmarks.

Every image yields one row, whatever happens to it: ``status`` is ``ok``, ``unreadable``
(missing/corrupt file), ``no_face`` (the detector found none), ``error`` (the detector
failed or returned unusable points) or ``bad_landmarks`` (landmarks given by the caller
cannot be aligned); ``quality`` is NaN unless ``ok``. A bad file never stops a run.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from aikd.align import align_to_template
from aikd.data.images import ImageReadError, read_rgb
from aikd.distill.data import to_float_input
from aikd.distill.model import QualityModel, load_quality_model, to_channels_last
from aikd.landmarks.base import POINT_COLUMNS, Detection, LandmarkDetector, ort_session_options
from aikd.landmarks.registry import get_detector

# The runner's batch call with per-image retry: one image that crashes the detector costs
# its own row only. Reused rather than re-implemented.
from aikd.landmarks.runner import _detect_chunk

log = logging.getLogger(__name__)

DEFAULT_DETECTOR = "retinaface"
DEFAULT_BATCH_SIZE = 32
#: Student backends: ``onnx`` runs an ONNX export in onnxruntime (1.5x the student's
#: images/s of eager torch, 1.34x end to end on the demo box, benchmarks/results/
#: score.json); exporting needs the
#: ``onnx`` package and takes a few seconds, so ``auto`` uses it only when installed and
#: for jobs of at least ``AUTO_ONNX_MIN_IMAGES`` images, torch otherwise.
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnx")
#: 0.5-3 s of export, session and check vs ~2.5 ms saved per image end to end on the demo
#: box: break-even after a few hundred images, so small requests (a served model) stay
#: on torch.
AUTO_ONNX_MIN_IMAGES = 1000
#: Largest |onnx - torch| normalised quality accepted by the check on the first batch.
ONNX_TOLERANCE = 1e-4
SCORE_STATUSES: tuple[str, ...] = ("ok", "unreadable", "no_face", "error", "bad_landmarks")
#: Columns of a score table (the CSV of ``aikd score`` and the pyfunc model's output).
SCORE_COLUMNS: list[str] = ["path", "quality", "status", *POINT_COLUMNS, "message"]
MAX_LOGGED_FAILURES = 20
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jp2"}
)


# --------------------------------------------------------------------------- inputs


def list_images(source: str | Path) -> pd.DataFrame:
    """``root, path`` rows of the images to score.

    ``source`` is a directory (searched recursively for common image extensions, sorted)
    or a manifest (``.parquet`` / ``.csv``) with a ``path`` column and optionally ``root``.
    A relative ``root`` is taken from the working directory, like the project's manifests;
    without ``root``, relative paths are relative to the manifest's own folder.
    """
    src = Path(source)
    if src.is_dir():
        files = sorted(
            p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not files:
            raise FileNotFoundError(
                f"{src}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found"
            )
        return pd.DataFrame(
            {"root": str(src), "path": [p.relative_to(src).as_posix() for p in files]}
        )
    if not src.is_file():
        raise FileNotFoundError(f"{src}: neither an image directory nor a manifest file")
    suffix = src.suffix.lower()
    if suffix == ".parquet":
        table = pd.read_parquet(src)
    elif suffix == ".csv":
        table = pd.read_csv(src)
    else:
        raise ValueError(f"{src}: a manifest must be .parquet or .csv, got {suffix or 'no suffix'}")
    if "path" not in table.columns:
        raise ValueError(f"{src}: manifest has no 'path' column (columns: {list(table.columns)})")
    if len(table) == 0:
        raise ValueError(f"{src}: manifest is empty")
    root = table["root"].astype(str) if "root" in table.columns else str(src.parent)
    return pd.DataFrame({"root": root, "path": table["path"].astype(str)}).reset_index(drop=True)


def decode_image_bytes(data: bytes, label: str) -> np.ndarray:
    """Decode encoded image bytes (a request's ``image`` column) with ``read_rgb``.

    Going through a temporary file keeps ``read_rgb`` the one place that decides how a
    file becomes RGB (grey expansion, alpha, 16-bit), so bytes and paths score alike.
    """
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) == 0:
        raise ImageReadError(label, "image bytes are empty")
    with tempfile.NamedTemporaryFile(suffix=".img") as tmp:
        tmp.write(bytes(data))
        tmp.flush()
        try:
            return read_rgb(tmp.name)
        except ImageReadError as exc:
            raise ImageReadError(label, exc.problem) from None


def _read(root: str | None, path: str, data: Any) -> np.ndarray | ImageReadError:
    """One image or the error that explains why it cannot be used (never raises)."""
    file = Path(path) if root is None else Path(root) / path
    try:
        if data is not None and not (isinstance(data, float) and math.isnan(data)):
            return decode_image_bytes(data, f"{path} (image bytes)")
        return read_rgb(file)
    except ImageReadError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - e.g. an OS error on a network share
        return ImageReadError(file, f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- student backends


def onnx_export_available() -> bool:
    """torch.onnx's exporter needs the ``onnx`` package; onnxruntime runs the result."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def check_backend(backend: str) -> str:
    """``backend`` if it can run here; a clear error for an unknown or unusable one."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "onnx" and not onnx_export_available():
        raise ImportError(
            "backend 'onnx' exports the student with torch.onnx, which needs the 'onnx' and "
            "'onnxruntime' packages (pip install onnx); or use --backend torch"
        )
    return backend


class _NormalizedQuality(nn.Module):
    """Backbone + head only: the label-scale map stays in torch (searchsorted), so both
    backends share it exactly."""

    def __init__(self, model: QualityModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.normalized_quality(x)


def export_onnx(model: QualityModel) -> bytes:
    """The student (float NCHW [0, 255] -> normalised quality) as ONNX bytes, batch dynamic.

    Uses the TorchScript exporter (``dynamo=False``): the torch.export one needs
    onnxscript, which the project does not install.
    """
    w, h = model.input_size
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer notes
        torch.onnx.export(
            _NormalizedQuality(model).eval(), (torch.zeros(2, 3, h, w),), buf, dynamo=False,
            input_names=["x"], output_names=["q"],
            dynamic_axes={"x": {0: "n"}, "q": {0: "n"}},
        )
    return buf.getvalue()


# --------------------------------------------------------------------------- scorer


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


class QualityScorer:
    """Raw photos -> quality with one detector and one distilled student.

    ``detector`` is a registry name (created lazily, so a scorer that only gets landmarks
    never loads it) or a ready instance. ``batch_size`` images are read, detected, aligned
    and scored together; the next batch is read in a background thread meanwhile (cv2
    releases the GIL), which hides most of the decoding time. ``backend`` (see
    ``BACKENDS``) runs the student in torch or, exported once, in onnxruntime; the first
    ONNX batch is checked against torch and a mismatch falls back to torch.
    """

    def __init__(
        self,
        model: QualityModel,
        detector: str | LandmarkDetector = DEFAULT_DETECTOR,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        threads: int | None = None,
        channels_last: bool = True,
        backend: str = "auto",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval().requires_grad_(False)
        self.batch_size = int(batch_size)
        self.threads = threads
        self.channels_last = channels_last
        self._session: Any = None
        self.requested_backend = self.backend = ""
        self.set_backend(backend)
        if channels_last:
            to_channels_last(self.model)
        self._detector: LandmarkDetector | None = None
        self.detector_name = ""
        self.set_detector(detector)

    @property
    def template(self) -> str:
        return self.model.template

    def set_detector(self, detector: str | LandmarkDetector) -> None:
        if isinstance(detector, LandmarkDetector):
            self._detector, self.detector_name = detector, detector.name
        else:
            self._detector, self.detector_name = None, str(detector)
        if self.detector_name == "reference":
            raise ValueError(
                "the 'reference' detector answers from a data set's landmark table, not from "
                "pixels; score raw photos with a real detector (e.g. retinaface) or pass "
                "landmarks in the x0..y4 columns"
            )

    @property
    def detector(self) -> LandmarkDetector:
        if self._detector is None:
            self._detector = get_detector(self.detector_name, threads=self.threads)
        return self._detector

    # ---- one batch

    def set_backend(self, backend: str) -> None:
        """``backend`` for the next images; ``auto`` starts on torch (see ``plan``)."""
        self.requested_backend = check_backend(backend)
        effective = "onnx" if backend == "onnx" else "torch"
        if effective != self.backend:
            self.backend, self._session = effective, None

    def plan(self, n_images: int) -> None:
        """Let ``auto`` pick onnx for a job large enough to repay the export."""
        if self.requested_backend == "auto":
            big = n_images >= AUTO_ONNX_MIN_IMAGES and onnx_export_available()
            if big and self.backend != "onnx":
                self.backend, self._session = "onnx", None

    def _onnx(self, batch: torch.Tensor) -> torch.Tensor | None:
        """Normalised quality from onnxruntime, or None after falling back to torch."""
        x = to_float_input(batch, False).numpy()
        if self._session is None:
            import onnxruntime as ort

            t0 = time.perf_counter()
            self._session = ort.InferenceSession(
                export_onnx(self.model), sess_options=ort_session_options(self.threads),
                providers=["CPUExecutionProvider"],
            )
            got = self._session.run(None, {"x": x[:1]})[0]
            want = self.model.normalized_quality(to_float_input(batch[:1], self.channels_last))
            diff = float(np.abs(got - want.float().numpy()).max())
            if not diff <= ONNX_TOLERANCE:
                log.error("ONNX export differs from torch by %.3g: scoring with torch", diff)
                self.backend, self._session = "torch", None
                return None
            log.info("student exported to ONNX in %.1f s (|onnx - torch| = %.1g)",
                     time.perf_counter() - t0, diff)
        return torch.from_numpy(self._session.run(None, {"x": x})[0])

    @torch.inference_mode()
    def forward(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        """Quality (label scale, float64) of aligned uint8 HxWx3 faces."""
        batch = torch.from_numpy(np.stack(faces))
        if self.backend == "onnx":
            t = self._onnx(batch)
            if t is not None:
                return self.model.to_label_scale(t.float()).double().numpy()
        x = to_float_input(batch, self.channels_last)
        return self.model(x).double().numpy()

    def score_batch(
        self,
        paths: Sequence[str],
        images: Sequence[np.ndarray | ImageReadError],
        landmarks: np.ndarray | None = None,
    ) -> pd.DataFrame:
        """Score decoded images (or their read errors); one output row per input, in order.

        ``landmarks`` (N, 5, 2), NaN rows meaning "detect": rows with finite landmarks
        skip the detector.
        """
        n = len(paths)
        status = np.array(["ok"] * n, dtype=object)
        message = np.array([""] * n, dtype=object)
        points = np.full((n, 5, 2), np.nan)
        given = np.zeros(n, dtype=bool)
        if landmarks is not None:
            lm = np.asarray(landmarks, dtype=np.float64).reshape(n, 5, 2)
            given = np.isfinite(lm).all(axis=(1, 2))
            points[given] = lm[given]
        for i, img in enumerate(images):
            if isinstance(img, ImageReadError):
                status[i], message[i], given[i] = "unreadable", str(img), False
                points[i] = np.nan
        todo = [i for i in range(n) if status[i] == "ok" and not given[i]]
        if todo:
            dets: list[Detection] = _detect_chunk(self.detector, [images[i] for i in todo])
            for i, det in zip(todo, dets, strict=True):
                if det.status == "ok" and det.points is not None:
                    points[i] = det.points
                elif det.status == "no_face":
                    status[i] = "no_face"
                    message[i] = f"{paths[i]}: {self.detector_name} found no face"
                else:
                    status[i] = det.status if det.status in SCORE_STATUSES else "error"
                    message[i] = f"{paths[i]}: {self.detector_name}: {det.message or det.status}"
        faces, face_rows = [], []
        for i in range(n):
            if status[i] != "ok":
                continue
            try:
                face, _ = align_to_template(images[i], points[i], self.template)
            except ValueError as exc:
                status[i] = "bad_landmarks" if given[i] else "error"
                message[i] = f"{paths[i]}: cannot align: {exc}"
                continue
            faces.append(face)
            face_rows.append(i)
        quality = np.full(n, np.nan)
        if faces:
            quality[face_rows] = self.forward(faces)
        table = pd.DataFrame({"path": list(paths), "quality": quality, "status": status})
        table[POINT_COLUMNS] = points.reshape(n, 10)
        table["message"] = message
        return table[SCORE_COLUMNS]

    # ---- tables

    def iter_scores(
        self, rows: pd.DataFrame, *, root: str | Path | None = None, progress: bool = False
    ) -> Iterator[pd.DataFrame]:
        """Score table chunks for ``rows``: ``path`` (+ ``root``, ``image`` bytes, x0..y4).

        Files are ``root/path`` (the column, else the ``root`` argument, else ``path``
        itself); a row's ``image`` bytes, when present, are used instead of the file.
        """
        if "path" not in rows.columns:
            raise ValueError(f"input needs a 'path' column (got {list(rows.columns)})")
        rows = rows.reset_index(drop=True)
        self.plan(len(rows))
        paths = rows["path"].astype(str).tolist()
        roots = (
            rows["root"].astype(str).tolist() if "root" in rows.columns
            else [None if root is None else str(root)] * len(rows)
        )
        blobs = rows["image"].tolist() if "image" in rows.columns else [None] * len(rows)
        have_lm = all(c in rows.columns for c in POINT_COLUMNS)
        lms = (
            rows[POINT_COLUMNS].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
            if have_lm else None
        )
        starts = list(range(0, len(rows), self.batch_size))

        def load(start: int) -> list[np.ndarray | ImageReadError]:
            stop = start + self.batch_size
            return [_read(r, p, b) for r, p, b in
                    zip(roots[start:stop], paths[start:stop], blobs[start:stop], strict=True)]

        from tqdm import tqdm

        bar = tqdm(total=len(rows), unit="img", desc="score", disable=not progress)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="aikd-read") as pool:
            pending: Future | None = pool.submit(load, starts[0]) if starts else None
            try:
                for k, start in enumerate(starts):
                    assert pending is not None
                    images = pending.result()
                    pending = pool.submit(load, starts[k + 1]) if k + 1 < len(starts) else None
                    stop = start + self.batch_size
                    table = self.score_batch(
                        paths[start:stop], images, None if lms is None else lms[start:stop]
                    )
                    bar.update(len(table))
                    yield table
            finally:
                bar.close()
                if pending is not None:
                    pending.cancel()

    def score_frame(self, rows: pd.DataFrame, *, root: str | Path | None = None) -> pd.DataFrame:
        """The whole score table of ``rows`` (see :meth:`iter_scores`)."""
        chunks = list(self.iter_scores(rows, root=root))
        if not chunks:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in SCORE_COLUMNS})
        return pd.concat(chunks, ignore_index=True)


# --------------------------------------------------------------------------- model references


def is_mlflow_uri(ref: str) -> bool:
    return ref.startswith(("models:/", "runs:/", "mlflow-artifacts:/")) or "://" in ref


def load_scorer(
    model: str | Path,
    *,
    detector: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    threads: int | None = None,
    tracking_uri: str | None = None,
    backend: str = "auto",
) -> QualityScorer:
    """A scorer for a registered model (``models:/aikd-serfiq@champion``, ``runs:/...``, a
    local MLflow model folder) or a distilled checkpoint (``models/<run>/model.pt`` or its
    folder). ``detector`` overrides the one bundled with a registered model (default
    retinaface for a checkpoint).
    """
    ref = str(model)
    local = Path(ref)
    if not is_mlflow_uri(ref) and not (local / "MLmodel").is_file():
        pt = local / "model.pt" if local.is_dir() else local
        if not pt.is_file():
            raise FileNotFoundError(
                f"{ref}: no model.pt there, and not an MLflow model URI "
                "(models:/<name>@<alias>, models:/<name>/<version>, runs:/<id>/model)"
            )
        return QualityScorer(
            load_quality_model(pt), detector or DEFAULT_DETECTOR,
            batch_size=batch_size, threads=threads, backend=backend,
        )
    import mlflow.pyfunc

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        loaded = mlflow.pyfunc.load_model(ref)
    except Exception as exc:
        raise RuntimeError(f"cannot load MLflow model {ref}: {type(exc).__name__}: {exc}") from exc
    inner = loaded.unwrap_python_model()
    scorer = getattr(inner, "scorer", None)
    if not isinstance(scorer, QualityScorer):
        raise TypeError(f"{ref} is not an aikd quality model (python model {type(inner).__name__})")
    if detector and detector != scorer.detector_name:
        log.warning("%s was registered with detector %s; scoring with %s as requested",
                    ref, scorer.detector_name, detector)
        scorer.set_detector(detector)
    scorer.batch_size = int(batch_size)
    scorer.threads = threads
    scorer.set_backend(backend)
    return scorer


def score_to_csv(
    scorer: QualityScorer, rows: pd.DataFrame, out: str | Path, *, progress: bool = True
) -> ScoreSummary:
    """Score ``rows`` (``root, path``) chunk by chunk into ``out`` (CSV, written atomically:
    a temporary file renamed at the end) and return the per-status summary."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    summary = ScoreSummary()
    t0 = time.perf_counter()
    shown = 0
    with tmp.open("w", newline="") as fh:
        header = True
        for table in scorer.iter_scores(rows, progress=progress):
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
