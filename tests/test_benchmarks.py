"""Person-disjoint benchmarks: capped within-person pairs, n_nonmated, View 2 restricted to a
split, person columns. Expectations are counted by hand from hand-made manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aikd.errors import UsageError
from aikd.evaluation.benchmarks import (
    BENCHMARK_COLUMNS,
    cap_per_person,
    identity_pairs,
    lfw_pairs,
    restrict_to_split,
    ytf_pairs,
)
from aikd.evaluation.settings import benchmark_from
from aikd.evaluation.stage import pairs_stage

#: test people and their image counts; T (train) must never appear.
COUNTS = {"Anna": 5, "Bob": 3, "Cleo": 1, "Dan": 2, "Eve": 4}


def manifest(counts: dict[str, int] = COUNTS) -> pd.DataFrame:
    rows = [(f"images/{p}/{p}_{k:04d}.jpg", p, "test") for p, n in counts.items()
            for k in range(1, n + 1)]
    rows += [("images/T/T_0001.jpg", "T", "train"), ("images/T/T_0002.jpg", "T", "train")]
    df = pd.DataFrame(rows, columns=["path", "identity", "split"])
    df["dataset"] = "faces"
    return df


def capped(counts: dict[str, int], cap: int | None) -> dict[str, int]:
    return {p: n if cap is None else min(n, cap) for p, n in counts.items()}


def n_mated(counts: dict[str, int]) -> int:
    return sum(k * (k - 1) // 2 for k in counts.values())


def n_nonmated_available(counts: dict[str, int]) -> int:
    total = sum(counts.values())
    return (total * total - sum(k * k for k in counts.values())) // 2


def unordered(pairs: pd.DataFrame) -> set[frozenset[str]]:
    return {frozenset(p) for p in zip(pairs["path_a"], pairs["path_b"], strict=True)}


@pytest.mark.parametrize("cap", [None, 1, 2, 3, 10])
def test_capped_mated_pairs_counted_by_hand(cap: int | None) -> None:
    man = manifest()
    expected = capped(COUNTS, cap)
    pairs = identity_pairs(man, split="test", max_images_per_identity=cap, seed=4)
    assert list(pairs.columns) == BENCHMARK_COLUMNS
    mated, non = pairs[pairs["mated"]], pairs[~pairs["mated"]]
    assert len(mated) == n_mated(expected)  # sum k(k-1)/2 over capped counts
    assert len(non) == len(mated)  # n_nonmated null: as many as mated
    used = pd.concat([pairs["path_a"], pairs["path_b"]])
    person = used.str.split("/").str[1]
    per_person = used.drop_duplicates().str.split("/").str[1].value_counts().to_dict()
    for p, k in per_person.items():
        assert k <= (cap or 99)
        assert k <= COUNTS[p]
    assert "T" not in set(person)
    # every image a person keeps is in their mated pairs (when they have >= 2)
    kept_mated = pd.concat([mated["path_a"], mated["path_b"]]).drop_duplicates()
    assert kept_mated.str.split("/").str[1].value_counts().to_dict() == {
        p: k for p, k in expected.items() if k >= 2}


def test_mated_same_person_nonmated_different_and_exact_count() -> None:
    man = manifest()
    cap = 3
    available = n_nonmated_available(capped(COUNTS, cap))  # 12 images: (144-32)/2 = 56
    assert available == 56
    for n in (0, 10, 40, 56):  # 40 and 56: the exhaustive branch
        pairs = identity_pairs(man, split="test", max_images_per_identity=cap, n_nonmated=n,
                               seed=1)
        mated, non = pairs[pairs["mated"]], pairs[~pairs["mated"]]
        assert (mated["person_a"] == mated["person_b"]).all()
        assert (non["person_a"] != non["person_b"]).all()
        assert (mated["person_a"] == mated["path_a"].str.split("/").str[1]).all()
        assert (non["person_b"] == non["path_b"].str.split("/").str[1]).all()
        assert len(non) == n and len(unordered(non)) == n  # n distinct pairs
        # non-mated pairs use only the capped images
        assert set(non["path_a"]) | set(non["path_b"]) <= (
            set(mated["path_a"]) | set(mated["path_b"])
            | set(man.loc[man["identity"] == "Cleo", "path"]))
    with pytest.raises(ValueError, match="57 non-mated pairs requested but only 56"):
        identity_pairs(man, split="test", max_images_per_identity=cap, n_nonmated=57)


def test_deterministic_and_independent_of_row_order() -> None:
    man = manifest()
    kw = {"split": "test", "max_images_per_identity": 2, "n_nonmated": 20}
    pairs = identity_pairs(man, seed=7, **kw)
    shuffled = man.sample(frac=1.0, random_state=3).reset_index(drop=True)
    pd.testing.assert_frame_equal(identity_pairs(shuffled, seed=7, **kw), pairs)
    pd.testing.assert_frame_equal(identity_pairs(man, seed=7, **kw), pairs)
    others = [identity_pairs(man, seed=s, **kw) for s in range(8, 12)]
    assert any(not o.equals(pairs) for o in others)  # the seed matters


def test_cap_of_a_person_does_not_depend_on_other_people() -> None:
    man = manifest()
    person = man["identity"]
    a = cap_per_person(man, person, 2, seed=5)
    fewer = man[man["identity"] != "Bob"]
    b = cap_per_person(fewer, fewer["identity"], 2, seed=5)
    assert set(a.loc[a["identity"] == "Anna", "path"]) == set(b.loc[b["identity"] == "Anna",
                                                                   "path"])
    assert a.groupby("identity").size().max() == 2


def test_person_column_preferred_over_identity() -> None:
    # two spellings of one person in two identity folders: one person, so no non-mated
    # pair joins them and their images form mated pairs
    man = pd.DataFrame({
        "path": ["a/1.jpg", "a/2.jpg", "b/1.jpg", "c/1.jpg"],
        "identity": ["Jo_Ann", "Jo_Ann", "jo-ann", "Max"],
        "person": ["jo ann", "jo ann", "jo ann", "max"],
        "split": "test",
    })
    pairs = identity_pairs(man, split="test", n_nonmated=3)
    mated = pairs[pairs["mated"]]
    assert len(mated) == 3 and set(mated["person_a"]) == {"jo ann"}
    non = pairs[~pairs["mated"]]
    assert len(non) == 3 and all("max" in {a, b} for a, b in
                                 zip(non["person_a"], non["person_b"], strict=True))


def test_ytf_cap_and_n_nonmated() -> None:
    # A: 3 videos x 2 frames; cap 2 keeps 2 frames; B: 2 videos x 1; C: 1 frame
    rows = [("A", 0, "a0"), ("A", 0, "a1"), ("A", 1, "a2"), ("A", 1, "a3"), ("A", 2, "a4"),
            ("A", 2, "a5"), ("B", 0, "b0"), ("B", 1, "b1"), ("C", 0, "c0")]
    man = pd.DataFrame(rows, columns=["identity", "video", "path"]).assign(split="test")
    full = ytf_pairs(man, n_nonmated=20, seed=2)
    # A: 15 pairs minus 3 within-video = 12; B: 1
    assert int(full["mated"].sum()) == 13 and int((~full["mated"]).sum()) == 20
    capped_pairs = ytf_pairs(man, max_images_per_identity=2, n_nonmated=5, seed=2)
    used_a = {p for p in set(capped_pairs["path_a"]) | set(capped_pairs["path_b"])
              if p.startswith("a")}
    assert len(used_a) <= 2
    mated = capped_pairs[capped_pairs["mated"]]
    assert (mated["person_a"] == mated["person_b"]).all()
    assert int((~capped_pairs["mated"]).sum()) == 5


def write_view2(root: Path) -> None:
    """2 folds x (2 mated + 2 non-mated) over people Anna, Bob, Eve (test) and T (train)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pairs.txt").write_text("\n".join([
        "2 2",
        "Anna 1 2", "T 1 2", "Anna 1 Bob 1", "Bob 2 T 1",
        "Bob 1 3", "Eve 2 4", "Eve 1 Anna 3", "T 2 Eve 1",
    ]) + "\n")


def test_view2_restricted_to_split(tmp_path: Path) -> None:
    write_view2(tmp_path / "lfw")
    man = manifest()
    pairs, summary = restrict_to_split(lfw_pairs(tmp_path / "lfw"), man, "test")
    split = man.set_index("path")["split"]
    assert (pairs["path_a"].map(split) == "test").all()
    assert (pairs["path_b"].map(split) == "test").all()
    assert unordered(pairs) == {
        frozenset({"images/Anna/Anna_0001.jpg", "images/Anna/Anna_0002.jpg"}),
        frozenset({"images/Anna/Anna_0001.jpg", "images/Bob/Bob_0001.jpg"}),
        frozenset({"images/Bob/Bob_0001.jpg", "images/Bob/Bob_0003.jpg"}),
        frozenset({"images/Eve/Eve_0002.jpg", "images/Eve/Eve_0004.jpg"}),
        frozenset({"images/Eve/Eve_0001.jpg", "images/Anna/Anna_0003.jpg"}),
    }
    assert pairs["fold"].tolist() == [0, 0, 1, 1, 1]
    assert summary == {"n_pairs_protocol": 8, "n_pairs": 5, "n_mated_protocol": 4,
                       "n_mated": 3, "n_nonmated_protocol": 4, "n_nonmated": 2,
                       "n_people_protocol": 4, "n_people": 3}


def params_for(tmp_path: Path, benchmarks: dict) -> dict:
    man_dir = tmp_path / "manifests"
    man_dir.mkdir(exist_ok=True)
    manifest().to_parquet(man_dir / "faces.parquet", index=False)
    return {"seed": 0, "manifest": {"out_dir": str(man_dir)},
            "datasets": {"faces": {"kind": "lfw", "root": str(tmp_path / "lfw")}},
            "evaluate": {"pairs_dir": str(tmp_path / "pairs"), "benchmarks": benchmarks}}


def test_pairs_stage_writes_persons_and_summary(tmp_path: Path) -> None:
    write_view2(tmp_path / "lfw")
    params = params_for(tmp_path, {
        "faces-id": {"kind": "identities", "dataset": "faces", "split": "test",
                     "max_images_per_identity": 3, "n_nonmated": 30},
        "faces-view2": {"kind": "lfw", "dataset": "faces", "split": "test"},
    })
    pid = pairs_stage(params, "faces-id")
    written = pd.read_parquet(tmp_path / "pairs" / "faces-id.parquet")
    assert list(written.columns) == BENCHMARK_COLUMNS
    assert (written["benchmark"] == "faces-id").all()
    assert int(written["mated"].sum()) == n_mated(capped(COUNTS, 3))
    assert int((~written["mated"]).sum()) == 30
    assert written["person_a"].notna().all() and written["person_b"].notna().all()
    pd.testing.assert_frame_equal(written, pid)
    summary = json.loads((tmp_path / "pairs" / "faces-id_summary.json").read_text())
    assert summary["n_mated"] == 10 and summary["n_nonmated"] == 30

    view2 = pairs_stage(params, "faces-view2")
    assert len(view2) == 5 and (view2["benchmark"] == "faces-view2").all()
    assert (view2["person_a"] == view2["path_a"].str.split("/").str[1]).all()
    assert ((view2["person_a"] == view2["person_b"]) == view2["mated"]).all()
    summary = json.loads((tmp_path / "pairs" / "faces-view2_summary.json").read_text())
    assert summary["n_pairs_protocol"] == 8 and summary["n_pairs"] == 5
    assert summary["n_people_protocol"] == 4 and summary["n_people"] == 3


@pytest.mark.parametrize(("spec", "named"), [
    ({"kind": "lfw", "dataset": "lfw", "n_nonmated": 10}, "only kinds ytf and identities"),
    ({"kind": "identities", "dataset": "lfw", "split": "test",
      "max_images_per_identity": 0}, ">= 1"),
    ({"kind": "identities", "dataset": "lfw", "split": "test", "n_nonmated": -1}, ">= 0"),
])
def test_benchmark_fields_checked(spec: dict, named: str) -> None:
    with pytest.raises(UsageError, match=named):
        benchmark_from("b", spec)


def test_hyphenated_benchmark_names_are_plain_keys() -> None:
    """Benchmark names are dict keys and file stems, never parsed as run names."""
    import yaml

    repo = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    names = list(params["evaluate"]["benchmarks"])
    assert {"lfw-id", "ytf-id", "lfw-view2"} <= set(names)
    specs = {n: benchmark_from(n, s) for n, s in params["evaluate"]["benchmarks"].items()}
    assert specs["lfw-id"].n_nonmated >= 100_000 and specs["ytf-id"].n_nonmated >= 100_000
    smoke = yaml.safe_load((repo / "profiles" / "smoke.yaml").read_text())
    for n, s in smoke["evaluate"]["benchmarks"].items():
        benchmark_from(n, s)
    assert np.all([isinstance(n, str) for n in names])


def test_csv_pairs_get_persons_and_a_warning_on_disagreement(tmp_path: Path) -> None:
    csv = tmp_path / "mine.csv"
    csv.write_text("path_a,path_b,mated\n"
                   "images/Anna/Anna_0001.jpg,images/Anna/Anna_0002.jpg,1\n"
                   "images/Anna/Anna_0001.jpg,images/Bob/Bob_0001.jpg,1\n")
    params = params_for(tmp_path, {"mine": {"kind": "csv", "dataset": "faces",
                                            "path": str(csv)}})
    with pytest.warns(UserWarning, match="1 pairs are mated but of two people"):
        pairs = pairs_stage(params, "mine")
    assert pairs["person_b"].tolist() == ["Anna", "Bob"]
