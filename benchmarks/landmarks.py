"""Speed and reference agreement of every installed landmark detector.

Run: .venv/bin/python benchmarks/landmarks.py [--n 60] [--threads 2] [--repeats 3]
Writes benchmarks/results/landmarks.json and prints images/s per detector on 150 px LFW
images (batches of 32, as the pipeline runs them; MTCNN also one image at a time, to show
what batching buys; best of ``--repeats`` passes), plus the NME to the reference
landmarks on the same LFW images and on as many YTF frames (100-320 px, so no two-size
batching there). Samples are every k-th image of the sorted reference tables, hence
identical from run to run. Timings are wall clock on a possibly shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aikd.data.images import read_rgb
from aikd.landmarks.base import POINT_COLUMNS, Detection
from aikd.landmarks.reference import load_reference_landmarks
from aikd.landmarks.registry import available_detectors, get_detector
from aikd.landmarks.report import landmark_agreement
from aikd.landmarks.runner import detection_row

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data").resolve()
RESULTS = REPO / "benchmarks" / "results" / "landmarks.json"
BATCH = 32


def sample(dataset: str, n: int) -> tuple[Path, pd.DataFrame, list[np.ndarray]]:
    root = DATA / dataset
    ref = load_reference_landmarks(dataset, root).sort_values("path").reset_index(drop=True)
    ref = ref.iloc[:: max(1, len(ref) // n)].head(n).reset_index(drop=True)
    return root, ref.assign(dataset=dataset), [read_rgb(root / p) for p in ref["path"]]


def timed_detect(
    det: Any, images: list[np.ndarray], repeats: int = 1, batch: int = BATCH
) -> tuple[float, list[Detection]]:
    """Best wall time over ``repeats`` passes (least disturbed by other load) of detecting
    every image in batches of ``batch``, and the detections."""
    best = float("inf")
    found: list[Detection] = []
    for _ in range(repeats):
        start = time.perf_counter()
        found = []
        for i in range(0, len(images), batch):
            found.extend(det.detect_batch(images[i : i + batch]))
        best = min(best, time.perf_counter() - start)
    return best, found


def as_table(ref: pd.DataFrame, name: str, found: list[Detection]) -> pd.DataFrame:
    return pd.DataFrame(
        [detection_row(p, d, name, det)
         for p, d, det in zip(ref["path"], ref["dataset"], found, strict=True)]
    )


def rounded_retinaface(images: list[np.ndarray], ref: pd.DataFrame) -> pd.DataFrame:
    """What `retinaface.detect_faces` itself returns (integer landmarks), for comparison."""
    import retinaface

    from aikd.landmarks.base import pick_face

    rows = []
    for path, img in zip(ref["path"], images, strict=True):
        faces = retinaface.detect_faces(img)
        row: dict[str, Any] = {"path": path, "dataset": "lfw", "status": "no_face"}
        if faces:
            boxes = np.array([[f.x, f.y, f.x + f.width, f.y + f.height] for f in faces])
            face = faces[pick_face(boxes, img.shape)]
            pts = np.array([[p.x, p.y] for p in face.landmarks], dtype=np.float64)
            row.update(status="ok", **dict(zip(POINT_COLUMNS, pts.ravel(), strict=True)))
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=["path", "dataset", "status", *POINT_COLUMNS])


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=60, help="images per dataset")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; best is kept")
    args = parser.parse_args()

    lfw_root, lfw_ref, lfw_images = sample("lfw", args.n)
    ytf_root, ytf_ref, ytf_images = sample("ytf", args.n)
    names = [n for n in available_detectors() if n != "reference"]
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "threads": args.threads,
        "n_images": {"lfw": len(lfw_images), "ytf": len(ytf_images)},
        "batch_size": BATCH,
        "repeats": args.repeats,
        "detectors": {},
    }
    tables: dict[str, pd.DataFrame] = {}
    for name in names:
        det = get_detector(name, threads=args.threads)
        start = time.perf_counter()
        det.detect_batch(lfw_images[:2])  # model load + warm-up
        load_s = time.perf_counter() - start
        seconds, found = timed_detect(det, lfw_images, args.repeats)
        _, ytf_found = timed_detect(det, ytf_images)
        tables[name] = pd.concat(
            [as_table(lfw_ref, name, found), as_table(ytf_ref, name, ytf_found)],
            ignore_index=True,
        )
        entry = {
            "load_and_warmup_s": round(load_s, 2),
            "lfw_images_per_s": round(len(lfw_images) / seconds, 1),
            "lfw_ms_per_image": round(1000 * seconds / len(lfw_images), 1),
        }
        if name == "mtcnn":
            few = lfw_images[:8]
            one_s, _ = timed_detect(det, few, args.repeats, batch=1)
            entry["lfw_images_per_s_one_at_a_time"] = round(len(few) / one_s, 1)
        results["detectors"][name] = entry
        print(f"{name:11s} {entry['lfw_images_per_s']:7.1f} images/s on 150 px LFW "
              f"({entry['lfw_ms_per_image']} ms/image, load {load_s:.1f} s)", flush=True)
        if "lfw_images_per_s_one_at_a_time" in entry:
            print(f"{'':11s} {entry['lfw_images_per_s_one_at_a_time']:7.1f} images/s "
                  "one image at a time", flush=True)

    if "retinaface" in tables:
        tables["retinaface_rounded"] = rounded_retinaface(lfw_images, lfw_ref)
    reference = pd.concat([lfw_ref, ytf_ref], ignore_index=True)
    report = landmark_agreement(tables, reference)
    results["agreement"] = json.loads(report.round(4).to_json(orient="records"))
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(report[["dataset", "detector", "n_images", "found_share", "nme_median",
                      "nme_p90", "share_nme_le_0.2"]].round(3).to_string(index=False))

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return results


if __name__ == "__main__":
    main()
