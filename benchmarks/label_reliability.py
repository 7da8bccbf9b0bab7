"""How reliable are the SDD-FIQA / CR-FIQA pseudo labels? The ceiling of any student.

Usage: python benchmarks/label_reliability.py [--data DIR] [--draws 5]
       [--out benchmarks/results/label_reliability.json]

Both labels compare an image with the *other* images of its person, so part of an image's
label is which other images that person happens to have: noise that no model of the image
alone can predict. This measures it on the labels stage's own rows (train + val people,
training alignment, teacher embeddings from ``--data``'s DVC outputs; no test person):

* **CR-FIQA, test-retest over the person's other images.** For people with at least
  2k + 1 images, each image's label CCS / (NNCCS + 1) is computed twice, with its own-class
  centre from two disjoint random sets of k other images (NNCCS as in the label). Spearman
  ρ between the two is the reliability of a label built on k other images. ``as_labelled``
  draws k per image from the distribution of k in the real labels (capped by the person's
  size), i.e. the reliability of the labels as the students see them. Both CCS estimates
  of ``aikd.fiqa.crfiqa`` are measured: ``crfiqa`` the leave-one-out centre, and
  ``crfiqa_debiased`` the debiased one (mean cosine to the k others over the square root of
  the mean pairwise cosine within the image and those k), each draw using only its own set.
* **SDD-FIQA, test-retest over its own sampling.** The label of every image with two seeds
  of its pair sampling (``m``, ``k`` from params); only the sampling noise, a lower bound
  on its total noise.

Under classical test theory a predictor of the label from the image alone correlates with
it at most sqrt(reliability) (Spearman only approximately): the figure printed as
``ceiling``. Cheap: numpy on ~9 k x 128 embeddings, seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.stats import spearmanr

from aikd.config import global_seed
from aikd.data.io import read_vectors
from aikd.data.training import training_detector, training_rows
from aikd.fiqa.crfiqa import crfiqa_components
from aikd.fiqa.sddfiqa import check_embeddings, sddfiqa_labels
from aikd.paths import embeddings_path

REPO = Path(__file__).resolve().parents[1]


def teacher_rows(params: dict) -> tuple[pd.DataFrame, np.ndarray]:
    """The labels stage's rows that have a training-alignment embedding, and those."""
    rows = training_rows(params)
    frames, vecs = [], []
    for ds, sub in rows.groupby("dataset"):
        meta, vectors = read_vectors(embeddings_path(params, str(ds), training_detector(params)))
        pos = pd.Series(np.arange(len(meta)), index=meta["path"])
        sub = sub[sub["path"].isin(pos.index)]
        frames.append(sub)
        vecs.append(vectors[pos[sub["path"]].to_numpy()])
    return pd.concat(frames, ignore_index=True), np.concatenate(vecs)


def crfiqa_retest(emb: np.ndarray, person: np.ndarray, centre: str = "loo"
                  ) -> Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]:
    """``retest(k_of, rng)``: two CR-FIQA labels per eligible image, own centres from
    disjoint sets of ``k_of[i]`` other images of its person (``k_of[i] == 0``: not
    eligible). The unit embeddings, NNCCS and each person's images are computed once here,
    since every draw shares them."""
    unit = check_embeddings(emb, person)
    _, nnccs = crfiqa_components(emb, person)
    members = {p: np.asarray(idx) for p, idx in
               pd.Series(np.arange(len(person))).groupby(person).groups.items()}

    def retest(k_of: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        a, b = np.full(len(unit), np.nan), np.full(len(unit), np.nan)
        for i in np.flatnonzero(k_of > 0):
            others = members[person[i]]
            others = rng.permutation(others[others != i])
            k = int(k_of[i])
            for out, pick in ((a, others[:k]), (b, others[k:2 * k])):
                out[i] = _ccs(unit, i, pick, centre) / (nnccs[i] + 1.0)
        return a, b

    return retest


def _ccs(unit: np.ndarray, i: int, pick: np.ndarray, centre: str) -> float:
    """CCS of image ``i`` against the other images ``pick`` of its person."""
    if centre == "loo":
        total = unit[pick].sum(axis=0)
        return float(unit[i] @ total / np.linalg.norm(total))
    group = unit[np.r_[i, pick]]
    gram = group @ group.T
    n = len(group)
    pair_mean = (gram.sum() - np.trace(gram)) / (n * (n - 1))
    return float(gram[0, 1:].mean() / np.sqrt(pair_mean)) if pair_mean > 0 else np.nan


def _rho(x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    ok = np.isfinite(x) & np.isfinite(y)
    return float(spearmanr(x[ok], y[ok]).statistic), int(ok.sum())


def _reliability(rhos: list[float]) -> dict[str, float]:
    """Mean and SD of the draws' test-retest rho, and the sqrt ceiling of the mean."""
    mean = float(np.mean(rhos))
    return {"reliability": round(mean, 3), "reliability_sd": round(float(np.std(rhos, ddof=1)), 3),
            "ceiling": round(float(np.sqrt(max(mean, 0))), 3)}


def crfiqa_reliability(emb: np.ndarray, person: np.ndarray, size: np.ndarray,
                       k_actual: np.ndarray, labelled: np.ndarray, centre: str, *,
                       seed: int, draws: int) -> dict[str, object]:
    """Test-retest reliability of CR-FIQA labels with ``centre`` for k = 1, 2, 4, 8 other
    images and with k drawn as in the real labels."""
    retest = crfiqa_retest(emb, person, centre)
    crf: dict[str, object] = {}
    for k in (1, 2, 4, 8):
        k_of = np.where(size >= 2 * k + 1, k, 0)
        rhos = []
        for d in range(draws):
            a, b = retest(k_of, np.random.default_rng([seed, k, d]))
            rho, n = _rho(a, b)
            rhos.append(rho)
        crf[f"k{k}"] = {"images": n, "people": int(len(set(person[k_of > 0]))),
                        **_reliability(rhos)}
        print(f"CR-FIQA ({centre}), centre from {k} other image(s): {crf[f'k{k}']}")
    rhos, n_used = [], 0
    for d in range(draws):
        rng = np.random.default_rng([seed, 99, d])
        draw = rng.choice(k_actual[labelled], size=len(person))  # k as in the real labels
        k_of = np.where(size >= 3, np.minimum(draw, (size - 1) // 2), 0)
        a, b = retest(k_of, rng)
        rho, n_used = _rho(a, b)
        rhos.append(rho)
    crf["as_labelled"] = {"images": n_used, **_reliability(rhos)}
    print(f"CR-FIQA ({centre}), k drawn as in the labels: {crf['as_labelled']}")
    return crf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO,
                    help="the checkout whose DVC outputs are read (manifests, embeddings)")
    ap.add_argument("--draws", type=int, default=5, help="random repetitions per figure")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/label_reliability.json")
    args = ap.parse_args()
    out = args.out.resolve()
    os.chdir(args.data)
    params = yaml.safe_load(Path("params.yaml").read_text())
    seed = global_seed(params)
    rows, emb = teacher_rows(params)
    person = (rows["dataset"] + "/" + rows["identity"].astype(str)).to_numpy()
    size = pd.Series(person).map(pd.Series(person).value_counts()).to_numpy()
    labelled = size >= 2
    k_actual = np.where(labelled, size - 1, 0)
    result: dict[str, object] = {
        "images": int(len(rows)), "labelled_images": int(labelled.sum()),
        "people": int(len(set(person))),
        "others_per_labelled_image": {
            "share_1": round(float((k_actual[labelled] == 1).mean()), 3),
            "share_2_3": round(float(np.isin(k_actual[labelled], [2, 3]).mean()), 3),
            "share_4_9": round(float(((k_actual >= 4) & (k_actual <= 9))[labelled].mean()), 3),
            "share_10_plus": round(float((k_actual[labelled] >= 10).mean()), 3),
            "median": float(np.median(k_actual[labelled]))},
    }
    print(f"{len(rows)} images, {labelled.sum()} labelled, {len(set(person))} people;"
          f" other images per labelled image: {result['others_per_labelled_image']}")

    for centre, key in (("loo", "crfiqa"), ("debiased", "crfiqa_debiased")):
        result[key] = crfiqa_reliability(emb, person, size, k_actual, labelled, centre,
                                         seed=seed, draws=args.draws)

    sdd = params["labels"]["sddfiqa"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        la = sddfiqa_labels(emb, person, m=int(sdd["m"]), k=int(sdd["k"]), seed=seed)
        lb = sddfiqa_labels(emb, person, m=int(sdd["m"]), k=int(sdd["k"]), seed=seed + 1)
    rho, n = _rho(la, lb)
    result["sddfiqa_sampling"] = {"images": n, "m": int(sdd["m"]), "k": int(sdd["k"]),
                                  "reliability": round(rho, 3),
                                  "ceiling": round(float(np.sqrt(max(rho, 0))), 3)}
    print(f"SDD-FIQA, two seeds of its sampling: {result['sddfiqa_sampling']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
