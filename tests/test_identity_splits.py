"""One split per person over the union of data sets (docs/splits.md): the name
normalisation, the seeded hash draw, and the cross-manifest great-expectations gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from aikd.data.manifest import normalise_person, person_split, split_identities
from aikd.data.stage import manifest_stage, split_rule, write_manifest
from aikd.data.validation import DataValidationError, validate_person_splits
from aikd.paths import manifest_path

SHARES = {"train": 0.55, "val": 0.10, "test": 0.35}


def test_normalise_person_folds_case_spaces_underscores_and_hyphens() -> None:
    assert normalise_person("John_Smith") == "john smith"
    assert normalise_person("  john   SMITH ") == "john smith"
    assert normalise_person("Jean-Pierre__Raffarin") == "jean pierre raffarin"
    assert normalise_person("Ana_-_Maria\tLopez") == "ana maria lopez"
    assert normalise_person("José_Núñez") == normalise_person("JOSÉ NÚÑEZ") == "josé núñez"


def test_person_split_ignores_spelling_and_is_seeded() -> None:
    names = [f"Person_{i}" for i in range(200)]
    for name in names[:20]:
        assert person_split(name, SHARES, 0) == person_split(name.lower().replace("_", " "),
                                                             SHARES, 0)
    a = [person_split(n, SHARES, 0) for n in names]
    assert a == [person_split(n, SHARES, 0) for n in names]
    assert a != [person_split(n, SHARES, 1) for n in names]
    assert person_split("x", {"train": 0.0, "val": 0.0, "test": 1.0}, 0) == "test"


def test_assignment_is_stable_when_people_are_added_and_realises_the_shares() -> None:
    names = [f"Name_{i:05d}" for i in range(20000)]
    base = split_identities(names[:10000], SHARES, seed=0)
    grown = split_identities(names, SHARES, seed=0)
    assert {n: grown[n] for n in base} == base  # a new person moves nobody
    assert split_identities(["Someone_New", *names[:100]], SHARES, 0)["Name_00050"] == \
        base["Name_00050"]
    counts = pd.Series(grown).value_counts(normalize=True)
    for split, share in SHARES.items():  # 20k draws: sd of a share <= 0.0036
        assert abs(counts[split] - share) < 0.015, (split, counts[split])
    # Shares are normalised by their sum: 11/2/7 is the same rule.
    assert split_identities(names[:500], {"train": 11, "val": 2, "test": 7}, 0) == {
        n: base[n] for n in names[:500]}


def _folder(root: Path, people: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for person, n in people.items():
        (root / person).mkdir(parents=True)
        for k in range(n):
            pixels = rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / person / f"{k:04d}.jpg")
    return root


@pytest.fixture()
def two_folders(tmp_path: Path) -> dict:
    """Two folder data sets on disk sharing a person spelt differently, and stage params."""
    a = _folder(tmp_path / "a", {"John_Smith": 3, "Ann_Lee": 2, "Bo_Ek": 1})
    b = _folder(tmp_path / "b", {"john smith": 2, "JOHN-smith": 1, "Carl Dahl": 2})
    params = {
        "seed": 0,
        "splits": dict(SHARES),
        "datasets": {"a": {"kind": "folder", "root": str(a)},
                     "b": {"kind": "folder", "root": str(b)}},
        "manifest": {"out_dir": str(tmp_path / "manifests")},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                   "artifact_root": str(tmp_path / "artifacts"), "experiment": "aikd-test"},
    }
    return params


def test_shared_person_gets_one_split_across_data_sets_and_the_gate_passes(two_folders):
    params = two_folders
    a = manifest_stage(params, "a")
    b = manifest_stage(params, "b")  # gated against a.parquet
    john = pd.concat([a, b])
    john = john[john["person"] == "john smith"]
    assert sorted(john["identity"].unique()) == ["JOHN-smith", "John_Smith", "john smith"]
    assert john["split"].nunique() == 1
    assert john["split"].iloc[0] == person_split("John Smith", SHARES, 0)
    report = validate_person_splits({"a": a, "b": b})
    assert report.success and report.offenders == []
    assert "1 of them in more than one" in report.to_markdown()
    text = (manifest_path(params, "b").parent / "b_validation.md").read_text()
    assert "person_splits_b`: PASSED" in text and "manifests (b, a)" in text


def test_gate_names_the_person_in_two_splits(two_folders):
    params = two_folders
    a = manifest_stage(params, "a")
    other = {"train": "test", "val": "test", "test": "train"}
    forced = a.copy()
    forced.loc[forced["person"] == "john smith", "split"] = other[
        person_split("John_Smith", SHARES, 0)]
    # The pure function on any dict of manifests.
    b = manifest_stage(params, "b")
    report = validate_person_splits({"a": forced, "b": b})
    assert not report.success and report.offenders == ["john smith"]
    assert report.failures[0]["examples"] == ["john smith"]
    assert "| john smith |" in report.to_markdown()
    with pytest.raises(DataValidationError, match="offending: john smith"):
        report.raise_for_failure()
    # The stage: a.parquet rewritten with the forced split (same rule) fails manifest@b,
    # which names the person in its error and its report and writes no manifest.
    out_a = manifest_path(params, "a")
    write_manifest(forced, out_a, split_rule(SHARES, 0))
    manifest_path(params, "b").unlink()
    with pytest.raises(DataValidationError, match="person_splits_b failed.*offending: john smith"):
        manifest_stage(params, "b")
    assert not manifest_path(params, "b").exists()
    text = (out_a.parent / "b_validation.md").read_text()
    assert "person_splits_b`: FAILED" in text and "| john smith |" in text
    # A manifest written with another split rule is stale (DVC re-runs it): not compared.
    write_manifest(forced, out_a, split_rule(SHARES, 1))
    manifest_stage(params, "b")
    assert "Not compared (written with another split rule, to be re-run): a." in (
        out_a.parent / "b_validation.md").read_text()


def test_per_dataset_splits_is_an_error(two_folders):
    params = two_folders
    params["datasets"]["a"]["splits"] = {"train": 1.0}
    with pytest.raises(ValueError, match="top-level 'splits'"):
        manifest_stage(params, "a")


def test_a_training_only_data_set_leaves_out_people_drawn_elsewhere(tmp_path: Path) -> None:
    people = {f"Person_{i:02d}": 2 for i in range(30)}
    root = _folder(tmp_path / "train_only", people)
    params = {
        "seed": 0, "splits": dict(SHARES),
        "datasets": {"vgg": {"kind": "folder", "root": str(root), "use": ["train", "val"]}},
        "manifest": {"out_dir": str(tmp_path / "manifests")},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                   "artifact_root": str(tmp_path / "artifacts"), "experiment": "aikd-test"},
    }
    drawn = {n: person_split(n, SHARES, 0) for n in people}
    man = manifest_stage(params, "vgg")
    assert set(man["identity"]) == {n for n, s in drawn.items() if s != "test"}
    assert set(man["split"]) <= {"train", "val"}  # left out, never moved to train
    summary = pd.read_json(tmp_path / "manifests" / "vgg_summary.json", typ="series")
    assert summary["persons_left_out"] == sum(s == "test" for s in drawn.values()) > 0
    params["datasets"]["vgg"]["use"] = ["train", "holdout"]
    with pytest.raises(ValueError, match="unknown splits"):
        manifest_stage(params, "vgg")
