import shutil
from pathlib import Path

import pandas as pd
import pytest

from aikd.config import apply_overrides, load_params
from aikd.data.manifest import build_manifest, split_identities, subset_manifest
from aikd.data.pairs import read_lfw_pairs
from aikd.data.validation import DataValidationError, validate_manifest

NAMES = ["Aaron_Peirsol", "Abdullah_Gul", "Adrien_Brody", "Al_Gore", "Alan_Ball"]


@pytest.fixture()
def tiny_lfw(tmp_path: Path, lfw_root: Path) -> Path:
    """An LFW-shaped folder: 5 people, a 1-fold pairs.txt, plus junk that must be reported."""
    root = tmp_path / "lfw"
    for name in NAMES:
        src = sorted((lfw_root / "images" / name).glob("*.jpg"))[:3]
        (root / "images" / name).mkdir(parents=True)
        for f in src:
            shutil.copy(f, root / "images" / name / f.name)
    (root / "images" / ".DS_Store").write_bytes(b"junk")
    (root / "images" / "landmarks_5pt.csv").write_text("path\n")  # metadata, not junk
    (root / "images" / NAMES[0] / "notes.txt").write_text("not an image")
    (root / "images" / NAMES[1] / f"{NAMES[1]}_0099.jpg").write_bytes(b"\xff\xd8garbage")
    (root / "pairs.txt").write_text(
        "1\t2\n"
        f"{NAMES[0]}\t1\t2\n{NAMES[1]}\t1\t2\n"
        f"{NAMES[0]}\t3\t{NAMES[2]}\t1\n{NAMES[1]}\t3\t{NAMES[2]}\t2\n"
    )
    return root


def test_lfw_pairs_official_counts(lfw_root):
    pairs = read_lfw_pairs(lfw_root / "pairs.txt")
    assert len(pairs) == 6000
    assert pairs["mated"].sum() == 3000
    assert pairs["fold"].nunique() == 10
    assert pairs.iloc[0]["path_a"].startswith("images/") and pairs.iloc[0]["path_a"].endswith(
        "_0001.jpg"
    )


def test_pairs_file_with_wrong_count_is_rejected(tmp_path):
    p = tmp_path / "pairs.txt"
    p.write_text("1\t2\nA\t1\t2\n")
    with pytest.raises(ValueError, match="expected 4 pair lines"):
        read_lfw_pairs(p)


def test_split_identities_is_seeded_and_exhaustive():
    ids = [f"id{i}" for i in range(100)]
    a = split_identities(ids, {"train": 0.6, "val": 0.1, "test": 0.3}, seed=3)
    b = split_identities(list(reversed(ids)), {"train": 0.6, "val": 0.1, "test": 0.3}, seed=3)
    assert a == b and set(a) == set(ids) and set(a.values()) == {"train", "val", "test"}
    assert split_identities(ids, {"train": 0.5, "test": 0.5}, seed=4) != split_identities(
        ids, {"train": 0.5, "test": 0.5}, seed=5
    )
    with pytest.raises(ValueError, match="non-negative"):
        split_identities(ids, {"train": -1.0, "test": 2.0}, seed=0)


def test_lfw_manifest_flags_eval_images_and_reports_junk(tiny_lfw):
    res = build_manifest("lfw", tiny_lfw, fractions={"train": 0.5, "val": 0.5}, seed=0)
    m = res.manifest
    n_images = len(list((tiny_lfw / "images").glob("*/*.jpg"))) - 1  # minus the garbage file
    assert len(m) == n_images
    eval_paths = {f"images/{NAMES[0]}/{NAMES[0]}_000{i}.jpg" for i in (1, 2, 3)}
    assert eval_paths <= set(m.loc[m["in_eval_pairs"], "path"])
    # View 2 images only carry the flag: the split is the person's draw (here no test at all).
    assert not m["split"].eq("test").any()
    expected = split_identities(NAMES, {"train": 0.5, "val": 0.5}, seed=0)
    assert m["split"].tolist() == m["identity"].map(expected).tolist()
    assert (m["person"] == m["identity"].str.lower().str.replace("_", " ")).all()
    assert set(m["identity"]) == set(NAMES)
    assert (m["width"] == 150).all() and (m["height"] == 150).all()
    reasons = dict(zip(res.rejected["path"], res.rejected["reason"], strict=True))
    assert "not an identity folder" in reasons["images/.DS_Store"]
    assert "images/landmarks_5pt.csv" not in reasons
    assert "not an image" in reasons[f"images/{NAMES[0]}/notes.txt"]
    assert "unreadable" in reasons[f"images/{NAMES[1]}/{NAMES[1]}_0099.jpg"]
    assert validate_manifest(m, "tiny").success


def test_folder_manifest_splits_by_identity(tiny_lfw):
    res = build_manifest(
        "folder", tiny_lfw / "images", fractions={"train": 0.6, "test": 0.4}, seed=1, dataset="mine"
    )
    m = res.manifest
    assert (m["dataset"] == "mine").all()
    assert m.groupby("identity")["split"].nunique().max() == 1  # no person in two splits


def test_broken_manifest_is_rejected_with_readable_report(tiny_lfw):
    m = build_manifest("lfw", tiny_lfw, fractions={"train": 1.0}, seed=0).manifest
    bad = m.copy()
    bad.loc[0, "path"] = bad.loc[1, "path"]  # duplicate
    bad.loc[2, "split"] = "test"  # one image of a person moved to another split
    assert bad.loc[2, "person"] == bad.loc[1, "person"]
    bad.loc[3, "path"] = "images/missing.jpg"
    bad.loc[4, "width"] = 0
    report = validate_manifest(bad, "broken")
    assert not report.success
    text = report.to_markdown()
    for needle in ("expect_column_values_to_be_unique", "file_exists", "width", "person_splits"):
        assert needle in text
    with pytest.raises(DataValidationError, match="FAILED"):
        report.raise_for_failure()


def test_params_overrides(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("a:\n  b: 1\n  c: [x]\nseed: 0\n")
    params = load_params(p, ["a.b=2", "a.c=[y, z]", "new.key=0.5"])
    assert params["a"] == {"b": 2, "c": ["y", "z"]} and params["new"]["key"] == 0.5
    with pytest.raises(ValueError, match="not a section"):
        apply_overrides(params, ["seed.x=1"])
    with pytest.raises(FileNotFoundError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_user_pairs_csv_mated_is_parsed_strictly(tmp_path):
    from aikd.data.pairs import read_pairs_csv

    p = tmp_path / "pairs.csv"
    p.write_text("path_a,path_b,mated\na.jpg,b.jpg,1\na.jpg,c.jpg,False\nb.jpg,c.jpg,true\n")
    assert read_pairs_csv(p)["mated"].tolist() == [True, False, True]
    p.write_text("path_a,path_b,mated\na.jpg,b.jpg,1\na.jpg,c.jpg,maybe\n")
    with pytest.raises(ValueError, match=r"lines \[3\]"):
        read_pairs_csv(p)


def test_subset_manifest_keeps_whole_identities_per_split():
    rows = []
    for split, n_ids in (("train", 10), ("test", 5)):
        for i in range(n_ids):
            n_img = 1 if i % 3 == 0 else 5  # some singletons
            rows += [{"path": f"{split}/id{i}/{k}.jpg", "identity": f"{split}{i}",
                      "split": split} for k in range(n_img)]
    man = pd.DataFrame(rows)
    sub = subset_manifest(man, identities=3, max_images=2, seed=1)
    per_split = sub.groupby("split")["identity"].nunique()
    assert per_split.to_dict() == {"test": 3, "train": 3}
    sizes = sub.groupby("identity").size()
    assert (sizes == 2).all()  # identities with >= 2 images come first, capped at 2
    assert sub.equals(subset_manifest(man, identities=3, max_images=2, seed=1))
    assert not sub.equals(subset_manifest(man, identities=3, max_images=2, seed=2))


def test_ytf_manifest_reports_a_stray_file_instead_of_crashing(tmp_path, ytf_root):
    """A file that is not named <Name>_<video><frame> has no video number: it is rejected
    with a reason, and the frames around it keep their video ids."""
    person = sorted(p.name for p in (ytf_root / "images").iterdir())[0]
    frames = sorted((ytf_root / "images" / person).glob("*.jpg"))[:4]
    folder = tmp_path / "ytf" / "images" / person
    folder.mkdir(parents=True)
    for f in frames:
        shutil.copy(f, folder / f.name)
    shutil.copy(frames[0], folder / "holiday.jpg")
    res = build_manifest("ytf", tmp_path / "ytf", fractions={"train": 1.0}, seed=0)
    assert sorted(res.manifest["path"]) == [f"images/{person}/{f.name}" for f in frames]
    expected = [int(f.stem.rsplit("_", 1)[1][0]) for f in frames]
    assert res.manifest.sort_values("path")["video"].tolist() == expected
    assert res.rejected["path"].tolist() == [f"images/{person}/holiday.jpg"]
    assert "not a YTF frame name" in res.rejected["reason"].iloc[0]


def test_dataset_spec_reads_entries_with_their_optional_keys() -> None:
    """`datasets.<name>`: kind and root required; a subset is typed; a per-dataset `splits`
    fails and points to the top-level shares."""
    from aikd.data.datasets import Subset, dataset_spec

    params = {"datasets": {"mine": {"kind": "folder", "root": "/faces"},
                           "lfw": {"kind": "lfw", "root": "x",
                                   "subset": {"identities": 6, "max_images": 4}},
                           "old": {"kind": "lfw", "root": "x", "splits": {"train": 1.0}}}}
    mine = dataset_spec(params, "mine")
    assert (mine.kind, mine.root, mine.subset) == ("folder", "/faces", None)
    assert dataset_spec(params, "lfw").subset == Subset(identities=6, max_images=4)
    with pytest.raises(KeyError, match="dataset 'nope' is not in params 'datasets' \\(mine, lfw"):
        dataset_spec(params, "nope")
    with pytest.raises(ValueError, match="datasets.old: a per-dataset 'splits'.*top-level"):
        dataset_spec(params, "old")
    params["datasets"]["mine"]["split"] = {"train": 1.0}
    with pytest.raises(ValueError, match="datasets.mine: unknown key\\(s\\) split"):
        dataset_spec(params, "mine")


def test_repo_params_datasets_are_valid_specs() -> None:
    from aikd.data.datasets import dataset_spec

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    assert {n: dataset_spec(params, n).kind for n in params["datasets"]} == {
        "lfw": "lfw", "ytf": "ytf"}
    from aikd.data.datasets import split_shares

    assert split_shares(params).as_dict() == {"train": 0.55, "val": 0.10, "test": 0.35}


def test_smoke_profile_datasets_are_valid_specs() -> None:
    from aikd.data.datasets import dataset_spec

    repo = Path(__file__).resolve().parents[1]
    params = load_params(repo / "params.yaml")
    smoke = load_params(repo / "profiles" / "smoke.yaml")
    for name, entry in smoke["datasets"].items():
        params["datasets"][name] = {**params["datasets"].get(name, {}), **entry}
    assert dataset_spec(params, "drill").kind == "folder"
