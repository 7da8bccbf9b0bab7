"""The alignment study on hand-made embeddings whose FNMR is known, and the jitter range
suggested from landmark disagreement."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aikd.evaluation.alignment import alignment_table, fnmr_at_fmr, write_alignment_report

PEOPLE = ["A", "B", "C", "D"]


def manifest() -> pd.DataFrame:
    rows = [(f"{p}/{k}.jpg", p, "val") for p in PEOPLE for k in range(3)]
    rows += [("T/0.jpg", "T", "train"), ("T/1.jpg", "T", "train")]
    return pd.DataFrame(rows, columns=["path", "identity", "split"]).assign(dataset="faces")


def embeddings(bad: bool, drop: str | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Image k of person i is the basis vector e_i; with ``bad``, A/2 sits halfway between
    e_A and e_B (cosine 1/sqrt 2 to A's other images AND to B's images)."""
    paths, vecs = [], []
    for i, p in enumerate(PEOPLE):
        for k in range(3):
            v = np.zeros(4)
            v[i] = 1.0
            if bad and p == "A" and k == 2:
                v = np.array([1.0, 1.0, 0.0, 0.0])
            if f"{p}/{k}.jpg" != drop:
                paths.append(f"{p}/{k}.jpg")
                vecs.append(v)
    return pd.DataFrame({"path": paths}), np.array(vecs)


def test_fnmr_at_fmr_by_hand() -> None:
    sim = np.array([0.9, 0.8, 0.3, 0.7, 0.5, 0.2, 0.1])
    mated = np.array([True, True, True, False, False, False, False])
    # FMR 0.3 over 4 non-mated: m = floor(1.2) = 1 -> threshold 0.5; 0.3 fails
    assert fnmr_at_fmr(sim, mated, 0.3) == pytest.approx((1 / 3, 0.5, 1))
    # FMR 0.01: m = 0 -> threshold 0.7 (the highest); 0.3 fails
    assert fnmr_at_fmr(sim, mated, 0.01)[2] == 1


def test_alignment_table_known_fnmr() -> None:
    emb = {("good", "net"): embeddings(False), ("bad", "net"): embeddings(True)}
    table = alignment_table(manifest(), emb, split="val", fmrs=[0.01, 0.05, 0.1],
                            max_images_per_identity=None, n_nonmated=None, seed=0)
    rows = table.set_index("detector")
    # 12 images of 4 people: 4 x 3 = 12 mated, (144 - 4*9) / 2 = 54 non-mated
    assert (table["n_mated"] == 12).all() and (table["n_nonmated"] == 54).all()
    assert (table["n_images"] == 12).all() and (table["n_people"] == 4).all()
    assert rows.loc["good", "fnmr_1e-2_net"] == 0.0
    # bad: non-mated max = 1/sqrt2 (A/2 with B's 3 images); FMR 1e-2 and 5e-2 keep that as
    # threshold (m = 0 and 2), so A/2's two mated pairs (cosine 1/sqrt2) fail; at FMR 0.1
    # m = 5 lands on a 0 similarity and nothing fails
    assert rows.loc["bad", "fnmr_1e-2_net"] == pytest.approx(2 / 12)
    assert rows.loc["bad", "n_fail_1e-2_net"] == 2
    assert rows.loc["bad", "fnmr_5e-2_net"] == pytest.approx(2 / 12)
    assert rows.loc["bad", "fnmr_1e-1_net"] == 0.0


def test_only_images_every_detector_embedded() -> None:
    emb = {("good", "net"): embeddings(False), ("bad", "net"): embeddings(True),
           ("lossy", "net"): embeddings(False, drop="D/2.jpg")}
    marks = {d: pd.DataFrame({"path": manifest()["path"], "status": "ok"})
             for d in ("good", "bad", "lossy")}
    marks["lossy"].loc[marks["lossy"]["path"] == "D/2.jpg", "status"] = "no_face"
    table = alignment_table(manifest(), emb, landmarks=marks, split="val", fmrs=[0.01],
                            max_images_per_identity=None, n_nonmated=None)
    rows = table.set_index("detector")
    # D/2 dropped for every detector: 3+3+3+1 = 10 mated, (121 - 31) / 2 = 45 non-mated
    assert (table["n_images_common"] == 11).all()
    assert (table["n_mated"] == 10).all() and (table["n_nonmated"] == 45).all()
    assert rows.loc["lossy", "n_no_landmarks"] == 1 and rows.loc["good", "n_no_landmarks"] == 0
    assert (table["n_no_embedding_net"] == 0).all()
    assert rows.loc["bad", "fnmr_1e-2_net"] == pytest.approx(2 / 10)
    # a sample of non-mated pairs: exactly that many, same for every detector
    sampled = alignment_table(manifest(), emb, split="val", fmrs=[0.01],
                              max_images_per_identity=None, n_nonmated=20, seed=3)
    assert (sampled["n_nonmated"] == 20).all()


def test_second_network_adds_columns(tmp_path) -> None:
    emb = {("good", "n1"): embeddings(False), ("bad", "n1"): embeddings(True),
           ("good", "n2"): embeddings(True), ("bad", "n2"): embeddings(False)}
    table = alignment_table(manifest(), emb, split="val", fmrs=[0.001],
                            max_images_per_identity=2)
    assert {"fnmr_1e-3_n1", "fnmr_1e-3_n2", "n_fail_1e-3_n2"} <= set(table.columns)
    csv, md = write_alignment_report(table, tmp_path, split="val",
                                     max_images_per_identity=2, fmrs=[0.001])
    text = md.read_text()
    assert "EVERY detector" in text and "fnmr_1e-3_n2" in text
    assert pd.read_csv(csv).shape == table.shape


def test_a_split_with_one_person_has_no_nonmated_pair_and_says_so() -> None:
    from aikd.evaluation.alignment import NoPairsError

    one = manifest()
    one = one[one["identity"].isin(["A", "T"])]
    meta, vecs = embeddings(False)
    keep = meta["path"].str.startswith("A/").to_numpy()
    emb = {("good", "net"): (meta[keep].reset_index(drop=True), vecs[keep])}
    with pytest.raises(NoPairsError, match="3 mated and 0 non-mated"):
        alignment_table(one, emb, split="val", fmrs=[0.01], max_images_per_identity=None,
                        n_nonmated=None, seed=0)
