"""The scorer: decoded photos -> detect 5 landmarks -> align -> distilled student.

It only chains the project's building blocks (a ``LandmarkDetector``,
``align_to_template``, ``to_float_input`` and the ``QualityModel``), so a photo scored
here gets exactly the quality ``predict_quality`` gives the same image aligned from the
same landmarks. Every image yields one row with a status (see `SCORE_STATUSES`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from aikd.align import align_to_template
from aikd.data.images import ImageReadError
from aikd.distill.model import QualityModel, to_channels_last
from aikd.faces import to_float_input
from aikd.landmarks.base import POINT_COLUMNS, Detection, LandmarkDetector, ort_session_options
from aikd.landmarks.registry import get_detector
from aikd.landmarks.runner import detect_batch_safely
from aikd.scoring import DEFAULT_BATCH_SIZE, DEFAULT_DETECTOR, backends
from aikd.scoring.inputs import read_image

log = logging.getLogger(__name__)

SCORE_STATUSES: tuple[str, ...] = ("ok", "unreadable", "no_face", "error", "bad_landmarks")
#: Columns of a score table (the CSV of ``aikd score`` and the pyfunc model's output).
SCORE_COLUMNS: list[str] = ["path", "quality", "status", *POINT_COLUMNS, "message"]


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
        self.requested_backend = backends.check_backend(backend)
        effective = "onnx" if backend == "onnx" else "torch"
        if effective != self.backend:
            self.backend, self._session = effective, None

    def plan(self, n_images: int) -> None:
        """Let ``auto`` pick onnx for a job large enough to repay the export."""
        if self.requested_backend == "auto":
            big = (n_images >= backends.AUTO_ONNX_MIN_IMAGES
                   and backends.onnx_export_available())
            if big and self.backend != "onnx":
                self.backend, self._session = "onnx", None

    def _onnx(self, batch: torch.Tensor) -> torch.Tensor | None:
        """Normalised quality from onnxruntime, or None after falling back to torch."""
        x = to_float_input(batch, False).numpy()
        if self._session is None:
            import onnxruntime as ort

            t0 = time.perf_counter()
            self._session = ort.InferenceSession(
                backends.export_onnx(self.model), sess_options=ort_session_options(self.threads),
                providers=["CPUExecutionProvider"],
            )
            got = self._session.run(None, {"x": x[:1]})[0]
            want = self.model.normalized_quality(to_float_input(batch[:1], self.channels_last))
            diff = float(np.abs(got - want.float().numpy()).max())
            if not diff <= backends.ONNX_TOLERANCE:
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
            dets: list[Detection] = detect_batch_safely(
                self.detector, [images[i] for i in todo])
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
            return [read_image(r, p, b) for r, p, b in
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
