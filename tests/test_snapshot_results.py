"""scripts/snapshot_results.py keeps an experiment's result files, not its weights."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _touch(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_snapshot_copies_results_with_their_layout_and_no_weights(tmp_path: Path) -> None:
    snap = _script("snapshot_results")
    ws = tmp_path / "ws"
    _touch(ws / "params.yaml", "train_seeds: [0, 1, 2]\n")
    _touch(ws / "dvc.lock", "schema: '2.0'\n")
    _touch(ws / "metrics/evaluation.json", "{}")
    _touch(ws / "reports/evaluation/summary.md", "# summary")
    _touch(ws / "reports/evaluation/edc/lfw-id.png", "png")
    _touch(ws / "data/evaluation/differences.parquet", "pq")
    for seed in (0, 1, 2):
        _touch(ws / f"models/sddfiqa-T/seed{seed}/metrics.json", f'{{"seed": {seed}}}')
        _touch(ws / f"models/sddfiqa-T/seed{seed}/model.pt", "weights")
    _touch(ws / "data/quality/lfw/dlib.parquet", "big table")
    out = tmp_path / "snap"
    _touch(out / "stale.txt", "from an older snapshot")

    files = snap.take_snapshot(ws, out, {"command": "dvc exp run"})

    kept = {str(f) for f in files}
    assert "models/sddfiqa-T/seed2/metrics.json" in kept
    assert "reports/evaluation/edc/lfw-id.png" in kept
    assert not any(f.endswith("model.pt") for f in kept)
    assert "data/quality/lfw/dlib.parquet" not in kept
    assert (out / "models/sddfiqa-T/seed1/metrics.json").read_text() == '{"seed": 1}'
    assert not (out / "stale.txt").exists()
    meta = json.loads((out / "SNAPSHOT.json").read_text())
    assert meta["train_seeds"] == [0, 1, 2]
    assert meta["files"] == len(files) == 9  # 6 result files + 3 metrics.json
    assert meta["command"] == "dvc exp run"


def test_snapshot_refuses_a_folder_that_is_not_a_workspace(tmp_path: Path) -> None:
    snap = _script("snapshot_results")
    _touch(tmp_path / "reports/evaluation/summary.md")
    with pytest.raises(FileNotFoundError, match="no params.yaml"):
        snap.take_snapshot(tmp_path, tmp_path / "out", {})


def test_readme_tables_read_the_committed_three_seed_snapshot() -> None:
    """The README's three-seed tables can be re-printed from git alone (no DVC cache)."""
    import subprocess
    import sys

    snap = REPO / "reports" / "snapshots" / "three_seeds"
    meta = json.loads((snap / "SNAPSHOT.json").read_text())
    assert meta["train_seeds"] == [0, 1, 2]
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "readme_tables.py"),
                          "--root", str(snap)], capture_output=True, text=True, check=True,
                         cwd=REPO).stdout
    trained = [line for line in out.splitlines()
               if line.startswith(("| sddfiqa | T |", "| crfiqa | C |"))]
    assert trained and all(" ± " in line for line in trained)  # seed SD beside each mean
    untrained = [line for line in out.splitlines() if line.startswith("| flip | - |")]
    assert untrained and not any(" ± " in line for line in untrained)
    learn = out[out.index("## Learnability"):]
    assert "| sddfiqa-T | sddfiqa  | T         |         3 |" in learn
