"""Bad-input drill: a small `folder` data set with broken files, and a check that every
stage of the DAG reported and skipped them (scripts/smoke.sh runs both around `dvc repro`).

``make`` copies a few LFW identities into ``<root>/<identity>/<image>`` with a
``landmarks_5pt.csv`` (as a user's own data set would come), then drops in, for one
identity of each split:

* ``<id>_9001.jpg``: a real photo cut to 60 % of its bytes (a valid header, so the
  manifest lists it; its reference landmarks are in the CSV, so nothing before the first
  pixel read can tell),
* ``<id>_9002.jpg``: a uniform grey image (a valid image without a face),

and one ``<id>_9003.jpg`` of random bytes, which the manifest must reject.

``check`` reads the stage outputs and fails (exit 1) unless each stage names or skips
every broken file: manifest (rejected.csv), landmarks (status), embeddings (failures
csv / absent), labels (status, no label; distill trains only on labelled rows), quality
(status, NaN quality), evaluate (pairs dropped).

Usage: python scripts/drill_data.py make|check [--params params.yaml] [--dataset drill]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import yaml

from aikd.data.manifest import split_identities

CUT, GREY, GARBAGE = "_9001.jpg", "_9002.jpg", "_9003.jpg"


def make(params: dict, dataset: str, lfw_root: Path, identities: int, images: int) -> None:
    cfg = params["datasets"][dataset]
    root = Path(cfg["root"])
    if root.exists():
        shutil.rmtree(root)
    ref = pd.read_csv(lfw_root / "landmarks_5pt.csv")
    ref["identity"] = ref["path"].str.split("/").str[-2]
    counts = ref.groupby("identity").size()
    names = sorted(counts[counts >= images].index)
    chosen = names[:: max(1, len(names) // identities)][:identities]
    rows = []
    for name in chosen:
        (root / name).mkdir(parents=True)
        for src in sorted(ref.loc[ref["identity"] == name, "path"])[:images]:
            rel = f"{name}/{Path(src).name}"
            shutil.copy(lfw_root / src, root / rel)
            rows.append(ref.loc[ref["path"] == src].assign(path=rel))
    table = pd.concat(rows, ignore_index=True).drop(columns="identity")
    # Same identity split as the manifest will compute, so both splits get broken files.
    split = split_identities(chosen, params["splits"], int(params.get("seed", 0)))
    for s in sorted(set(split.values())):
        name = next(n for n in chosen if split[n] == s)
        first = table[table["path"].str.startswith(f"{name}/")].iloc[0]
        data = (root / first["path"]).read_bytes()
        (root / name / f"{name}{CUT}").write_bytes(data[: len(data) * 6 // 10])
        table = pd.concat([table, first.to_frame().T.assign(path=f"{name}/{name}{CUT}")])
        cv2.imwrite(str(root / name / f"{name}{GREY}"), np.full((150, 150, 3), 128, np.uint8))
    rng = np.random.default_rng(int(params.get("seed", 0)))
    (root / chosen[0] / f"{chosen[0]}{GARBAGE}").write_bytes(rng.bytes(2048))
    table.to_csv(root / "landmarks_5pt.csv", index=False)
    print(f"drill data set {dataset}: {len(chosen)} identities in {root}, "
          f"{2 * len(set(split.values())) + 1} broken files")


def _broken(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["path"].astype(str).str.endswith((CUT, GREY, GARBAGE))]


def check(params: dict, dataset: str) -> list[str]:
    """Every problem found; an empty list means every stage handled every broken file."""
    from aikd.evaluation.benchmarks import benchmarks_of
    from aikd.evaluation.tables import method_columns
    from aikd.paths import embeddings_path, labels_path, landmarks_path, manifest_path, quality_path

    problems: list[str] = []
    lines: list[str] = []
    man = pd.read_parquet(manifest_path(params, dataset))
    rejected = pd.read_csv(manifest_path(params, dataset).with_name(f"{dataset}_rejected.csv"))
    listed = set(_broken(man)["path"])
    if not _broken(rejected)["path"].str.endswith(GARBAGE).any():
        problems.append("manifest: the random-bytes file is not in rejected.csv")
    if any(p.endswith(GARBAGE) for p in listed):
        problems.append("manifest: the random-bytes file is listed")
    lines.append(f"manifest: rejected {_broken(rejected)['path'].tolist()}")
    for det in params["landmarks"]["detectors"]:
        marks = _broken(pd.read_parquet(landmarks_path(params, dataset, det)))
        pixel = marks[~marks["path"].str.endswith(CUT) | (det != "reference")]
        if (pixel["status"] == "ok").any():
            problems.append(f"landmarks {det}: a broken file has status ok")
        lines.append(f"landmarks {det}: {dict(zip(marks['path'], marks['status'], strict=True))}")
    for det in params["evaluate"]["detectors"]:
        emb = embeddings_path(params, dataset, det)
        kept = _broken(pd.read_parquet(emb, columns=["path"]))
        failures = pd.read_csv(emb.with_name(emb.stem + "_failures.csv"))
        if len(kept):
            problems.append(f"embed {det}: broken files embedded: {kept['path'].tolist()}")
        lines.append(f"embed {det}: failures {_broken(failures)['path'].tolist()}")
    if dataset in params["labels"]["datasets"]:
        for method in params["labels"]["methods"]:
            labels = _broken(pd.read_parquet(labels_path(params, method)))
            labels = labels[labels["dataset"] == dataset]
            if labels["quality"].notna().any() or (labels["status"] == "ok").any():
                problems.append(f"labels {method}: a broken file got a label")
            found = dict(zip(labels["path"], labels["status"], strict=True))
            lines.append(f"labels {method}: {found}")
    benchmarks = benchmarks_of(params, dataset)
    if benchmarks:
        for det in params["evaluate"]["detectors"]:
            q = _broken(pd.read_parquet(quality_path(params, dataset, det)))
            values = q[method_columns(q)].to_numpy(dtype=float)
            if (q["status"] == "ok").any() or np.isfinite(values).any():
                problems.append(f"quality {det}: a broken file has a quality")
            lines.append(f"quality {det}: {dict(zip(q['path'], q['status'], strict=True))}")
        results = pd.read_parquet(Path(params["evaluate"]["out_dir"]) / "results.parquet")
        dropped = results[results["benchmark"].isin(benchmarks)]["n_dropped"]
        if not (dropped > 0).all():
            problems.append("evaluate: no pair with a broken image was dropped")
        lines.append(f"evaluate: pairs dropped per cell {sorted(set(dropped.tolist()))}")
    print("\n".join(lines))
    return problems


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["make", "check"])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--dataset", default="drill")
    p.add_argument("--lfw", default=None, help="LFW root (default: datasets.lfw.root)")
    p.add_argument("--identities", type=int, default=8)
    p.add_argument("--images", type=int, default=4)
    a = p.parse_args()
    params = yaml.safe_load(Path(a.params).read_text())
    if a.action == "make":
        lfw = Path(a.lfw or params["datasets"]["lfw"]["root"])
        make(params, a.dataset, lfw, a.identities, a.images)
        return
    problems = check(params, a.dataset)
    if problems:
        print("drill FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        sys.exit(1)
    print(f"drill: every stage reported and skipped the broken files of {a.dataset}")


if __name__ == "__main__":
    main()
