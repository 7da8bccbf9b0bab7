"""The DVC stages of training seeds: one distill stage per (run, seed), named and laid
out as documented, and appending a seed leaves the stages of the seeds already trained
exactly as they were (so `dvc repro` trains only the new one)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _stages(root: Path, seeds: list[int]) -> dict[str, Any]:
    """DVC's own reading of the project's dvc.yaml with params ``train_seeds`` = seeds."""
    from dvc.repo import Repo

    root.mkdir()
    shutil.copy(REPO / "dvc.yaml", root)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train_seeds"] = seeds
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    Repo.init(str(root), no_scm=True)
    with Repo(str(root)) as repo:
        return {s.name: s for s in repo.index.stages}


def _definition(stage: Any) -> tuple:
    params = {}
    for dep in stage.deps:
        if hasattr(dep, "read_params"):
            params.update(dep.read_params())
    return (stage.cmd, sorted(str(d) for d in stage.deps), sorted(str(o) for o in stage.outs),
            repr(sorted(params.items(), key=lambda kv: kv[0])))


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    base = tmp_path_factory.mktemp("seeds")
    return _stages(base / "two", [0, 1]), _stages(base / "three", [0, 1, 2])


def test_one_distill_stage_per_run_and_seed(stages) -> None:
    two, _ = stages
    runs = yaml.safe_load((REPO / "params.yaml").read_text())["distill"]["runs"]
    distill = {n for n in two if n.startswith("distill@")}
    assert distill == {f"distill@{run}-{seed}" for run in runs for seed in (0, 1)}
    st = two["distill@sddfiqa-T-1"]
    assert st.cmd == "python pipelines/distill.py sddfiqa-T@s1"
    assert {str(o) for o in st.outs} >= {"models/sddfiqa-T/seed1/model.pt",
                                         "models/sddfiqa-T/seed1/metrics.json"}
    assert "models/serfiq-T/seed0/model.pt" in {str(d) for d in two["register@serfiq-T"].deps}


def test_appending_a_seed_keeps_the_trained_seeds_stages(stages) -> None:
    two, three = stages
    for name in (n for n in two if n.startswith("distill@")):
        assert _definition(two[name]) == _definition(three[name]), name
    assert "distill@crfiqa-B-2" in three and "distill@crfiqa-B-2" not in two
    # the quality stage scores every model: it does see the new seed
    assert _definition(two["quality@lfw-dlib"]) != _definition(three["quality@lfw-dlib"])
