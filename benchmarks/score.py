"""Throughput of `aikd score` (read + RetinaFace + alignment + student) and of the student.

For the student alone it reports images/s and the share of this CPU's fp32 matmul peak
(measured here, square torch.matmul, best of several) that the backbone's FLOPs reach,
for the variants that matter on CPU: contiguous vs channels-last weights, no_grad vs
inference_mode, batch size, intra-op threads, torch.compile and ONNX Runtime. Then the
per-stage cost of the scoring path and the end-to-end rate of `score_to_csv` (what the
CLI runs) on real LFW photos. Timings are the best of ``--repeats`` passes (least
disturbed by other processes on a shared box); the load average is recorded.

Usage: python benchmarks/score.py [--images 256] [--batch 32] [--repeats 3] [--compile]
Writes benchmarks/results/score.json. The ONNX rows need the ``onnx`` package (torch's
exporter imports it); without it they are skipped and the reason is recorded.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from embed import count_flops, matmul_peak_gflops  # benchmarks/embed.py (same folder)
from torch import nn

from aikd.align import align_to_template
from aikd.data.images import read_rgb
from aikd.distill.data import LabelNorm
from aikd.distill.model import (
    AIKDStudent,
    QualityModel,
    load_quality_model,
    save_quality_model,
    to_channels_last,
)
from aikd.faces import to_float_input
from aikd.landmarks.base import ort_session_options
from aikd.landmarks.registry import get_detector
from aikd.models.registry import RandomWeightsWarning, load_backbone
from aikd.scoring import QualityScorer, export_onnx, onnx_export_available, score_to_csv

REPO = Path(__file__).resolve().parents[1]
LFW = (REPO / ".." / "shared" / "data" / "lfw").resolve()
RESULTS = REPO / "benchmarks" / "results" / "score.json"


def best_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    return interleaved({"": fn}, repeats, warmup)[""]


def interleaved(cases: dict[str, Callable[[], Any]], repeats: int,
                warmup: int = 1) -> dict[str, float]:
    """Best wall time of each case over ``repeats`` rounds. A round runs every case once,
    in turn, so the slow phases of a shared box hit all cases alike and the ratios hold."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def with_threads(threads: int, fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        torch.set_num_threads(threads)
        return fn()

    return run


def quality_model(tmp: Path) -> tuple[QualityModel, str]:
    """A distilled model if the pipeline made one, else dlib's ResNet with a fresh head
    (same architecture and cost: the head is 128 -> 256 -> 1)."""
    models = REPO / "models"  # <run>/seed<seed>/model.pt; <run>/model.pt before seeds
    found = sorted([*models.glob("*/seed*/model.pt"), *models.glob("*/model.pt")])
    if found:
        return load_quality_model(found[0]), str(found[0].relative_to(REPO))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        student = AIKDStudent(load_backbone("dlib_resnet"), "head")
    path = save_quality_model(tmp / "model.pt", student, backbone_name="dlib_resnet",
                              label_norm=LabelNorm.fit(np.linspace(0, 1, 50), "rank"),
                              config={})
    return load_quality_model(path), "dlib_resnet + untrained head (no models/*/model.pt yet)"


def lfw_rows(n: int) -> pd.DataFrame:
    ref = pd.read_csv(LFW / "landmarks_5pt.csv").sort_values("path").reset_index(drop=True)
    return ref.iloc[:: max(1, len(ref) // n)].head(n).assign(root=str(LFW)).reset_index(drop=True)


def student_case(model: nn.Module, faces: torch.Tensor, batch: int, *,
                 channels_last: bool, inference_mode: bool) -> Callable[[], None]:
    """uint8 NHWC faces -> quality, exactly the scorer's torch forward."""
    ctx = torch.inference_mode if inference_mode else torch.no_grad
    chunks = [faces[i : i + batch] for i in range(0, len(faces), batch)]

    def run() -> None:
        with ctx():
            for c in chunks:
                model(to_float_input(c, channels_last))

    return run


def onnx_case(onnx_bytes: bytes, faces: torch.Tensor, batch: int,
              threads: int) -> Callable[[], None]:
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, ort_session_options(threads),
                                providers=["CPUExecutionProvider"])
    chunks = [to_float_input(faces[i : i + batch], False).numpy()
              for i in range(0, len(faces), batch)]
    return lambda: [sess.run(None, {"x": c}) for c in chunks]


def bench_student(model: QualityModel, rows: pd.DataFrame, args: argparse.Namespace,
                  peaks: dict[int, float], gflop: float) -> dict[str, Any]:
    """The student alone, on real aligned faces (reference landmarks): images/s and share of
    the matmul peak per variant (layout, grad mode, batch, threads, compile, ONNX)."""
    default_threads = torch.get_num_threads()
    crops = [align_to_template(read_rgb(LFW / p), lm.reshape(5, 2), model.template)[0]
             for p, lm in zip(rows["path"], rows[[f"{a}{i}" for i in range(5) for a in "xy"]]
                              .to_numpy(np.float64), strict=True)]
    faces = torch.from_numpy(np.stack(crops[:64]))
    contiguous = copy.deepcopy(model)
    channels_last = to_channels_last(copy.deepcopy(model))
    b, t2 = args.batch, default_threads
    cases: dict[str, tuple[int, Callable[[], Any]]] = {
        f"contiguous no_grad b{b} t1": (1, student_case(
            contiguous, faces, b, channels_last=False, inference_mode=False)),
        f"channels_last no_grad b{b} t1": (1, student_case(
            channels_last, faces, b, channels_last=True, inference_mode=False)),
    }
    for bs in (1, 8, b, 64):
        cases[f"channels_last inference_mode b{bs} t1"] = (1, student_case(
            channels_last, faces, bs, channels_last=True, inference_mode=True))
    if t2 != 1:
        cases[f"channels_last inference_mode b{b} t{t2}"] = (t2, student_case(
            channels_last, faces, b, channels_last=True, inference_mode=True))
    student: dict[str, Any] = {}
    if args.compile:
        try:
            torch.set_num_threads(1)
            t0 = time.perf_counter()
            compiled = torch.compile(to_channels_last(copy.deepcopy(model)))
            with torch.inference_mode():
                compiled(to_float_input(faces[:b], True))
            student["compile_warmup_s"] = round(time.perf_counter() - t0, 1)
            cases[f"channels_last inference_mode compile b{b} t1"] = (1, student_case(
                compiled, faces, b, channels_last=True, inference_mode=True))
        except Exception as exc:  # noqa: BLE001 - record why it does not work here
            student["compile_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            print("torch.compile failed:", student["compile_error"])
            traceback.print_exc(limit=2)
    if onnx_export_available():
        t0 = time.perf_counter()
        onnx_bytes = export_onnx(model)
        student["onnx_export_s"] = round(time.perf_counter() - t0, 1)
        x = to_float_input(faces[:b], False)
        with torch.inference_mode():
            ref = model.normalized_quality(x).numpy()
        import onnxruntime as ort

        sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        student["onnx_max_abs_diff_vs_torch"] = float(
            np.abs(sess.run(None, {"x": x.numpy()})[0] - ref).max())
        for threads in sorted({1, t2}):
            cases[f"onnxruntime b{b} t{threads}"] = (threads, onnx_case(
                onnx_bytes, faces, b, threads))
    else:
        student["onnx_error"] = "the onnx package (needed by torch.onnx.export) is missing"
        print("ONNX:", student["onnx_error"])
    times = interleaved({k: with_threads(t, fn) for k, (t, fn) in cases.items()},
                        args.repeats)
    for name, (threads, _) in cases.items():
        rate = len(faces) / times[name]
        student[name] = {"images_per_s": round(rate, 1), "threads": threads,
                         "share_of_peak": round(rate * gflop / peaks[threads], 3)}
        print(f"student {name:>44}: {rate:7.1f} images/s, "
              f"{student[name]['share_of_peak']:.1%} of the {threads}-thread peak")
    student["faces"] = len(faces)
    return student



def bench_stages(model: QualityModel, rows: pd.DataFrame, b: int,
                 repeats: int) -> dict[str, Any]:
    """Stages of the scoring path on the same photos (ms per image, 1 thread)."""
    torch.set_num_threads(1)
    files = [str(LFW / p) for p in rows["path"]]
    n = len(files)
    images = [read_rgb(f) for f in files]
    det = get_detector("retinaface", threads=1)
    dets = det.detect_batch(images[:b]) + [
        d for i in range(b, n, b) for d in det.detect_batch(images[i : i + b])]
    ok = [(img, d.points) for img, d in zip(images, dets, strict=True) if d.status == "ok"]
    aligned = [align_to_template(img, pts, model.template)[0] for img, pts in ok]
    stage_cases: dict[str, Callable[[], Any]] = {
        "read": lambda: [read_rgb(f) for f in files],
        "detect": lambda: [det.detect_batch(images[i : i + b]) for i in range(0, n, b)],
        "align": lambda: [align_to_template(img, pts, model.template) for img, pts in ok],
    }
    for backend in ("torch", "onnx") if onnx_export_available() else ("torch",):
        sc = QualityScorer(copy.deepcopy(model), det, batch_size=b, threads=1, backend=backend)
        stage_cases[f"student_{backend}"] = lambda sc=sc: [
            sc.forward(aligned[i : i + b]) for i in range(0, len(aligned), b)]
    stage_times = interleaved(stage_cases, repeats)
    return {"stages_ms_per_image": {
        k: round(v / (len(ok) if k in ("align", "student_torch", "student_onnx") else n) * 1e3,
                 2) for k, v in stage_times.items()},
            "stages_threads": 1, "faces_found": f"{len(ok)}/{n}"}



def bench_end_to_end(model: QualityModel, rows: pd.DataFrame, b: int, t2: int,
                     repeats: int, tmp: Path) -> dict[str, float]:
    """End to end: what `aikd score` runs (prefetching reader thread), per backend."""
    files = [str(LFW / p) for p in rows["path"]]
    n = len(files)
    e2e_cases: dict[str, Callable[[], Any]] = {}
    for backend in ("torch", "onnx") if onnx_export_available() else ("torch",):
        for threads in sorted({1, t2}):
            torch.set_num_threads(threads)
            sc = QualityScorer(copy.deepcopy(model),
                               get_detector("retinaface", threads=threads),
                               batch_size=b, threads=threads, backend=backend)
            sc.score_batch(files[:4], [read_rgb(f) for f in files[:4]])  # load, export, warm
            e2e_cases[f"{backend}_threads_{threads}"] = with_threads(
                threads, lambda sc=sc: score_to_csv(sc, rows[["root", "path"]],
                                                    tmp / "scores.csv", progress=False))
    e2e = interleaved(e2e_cases, repeats, warmup=0)
    return {k: round(n / v, 1) for k, v in e2e.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=256, help="LFW photos for the end-to-end runs")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also try torch.compile")
    args = ap.parse_args()
    torch.manual_seed(0)
    default_threads = torch.get_num_threads()
    res: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "default_torch_threads": default_threads,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "images": args.images, "batch_size": args.batch, "repeats": args.repeats,
    }
    if onnx_export_available():
        import onnx
        import onnxruntime

        res["onnx"] = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                       "onnx_location": str(Path(onnx.__file__).parent.parent)}
    tmp = Path(tempfile.mkdtemp(prefix="aikd-bench-score-"))
    model, model_source = quality_model(tmp)
    res["model"] = model_source
    rows = lfw_rows(args.images)

    # ---- peak and FLOPs
    peaks = {}
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        peaks[threads] = matmul_peak_gflops(n=2048, repeats=6)
    torch.set_num_threads(default_threads)
    w, h = model.input_size
    gflop = count_flops(model.backbone, torch.rand(2, 3, h, w) * 255) / 1e9
    res["matmul_peak_gflops"] = {f"threads_{k}": round(v, 1) for k, v in peaks.items()}
    res["gflop_per_image"] = round(gflop, 3)

    student = bench_student(model, rows, args, peaks, gflop)
    res["student_faces"] = student.pop("faces")
    res["student"] = student
    b, t2 = args.batch, default_threads

    res.update(bench_stages(model, rows, b, args.repeats))
    res["score_end_to_end_images_per_s"] = bench_end_to_end(model, rows, b, t2, args.repeats,
                                                            tmp)
    for k, v in res["score_end_to_end_images_per_s"].items():
        print(f"aikd score end to end, {k}: {v} images/s")
    torch.set_num_threads(default_threads)
    res["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    for k, v in res.items():
        if not isinstance(v, dict):
            print(f"{k:>32}: {v}")
    print(json.dumps({k: res[k] for k in ("matmul_peak_gflops", "stages_ms_per_image")}))
    shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
