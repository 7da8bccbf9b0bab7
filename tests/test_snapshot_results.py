"""scripts/snapshot_results.py keeps an experiment's result files, not its weights;
scripts/readme_tables.py prints the README's tables and win counts from them."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pandas as pd
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


def _row(detector: str, delta: float, seed: float = math.nan, *, low: float = -1.0,
         high: float = 1.0, fmr: float = 0.001, method: str = "crfiqa") -> dict[str, object]:
    return {"fr_model": "net", "baseline": "B", "method": method, "benchmark": "b",
            "detector": detector, "fmr": fmr, "threshold": "recomputed", "seed": seed,
            "delta": delta, "delta_low": low, "delta_high": high}


def test_win_counts_use_seed_means_per_seed_rows_and_only_misaligned_primary_cells() -> None:
    tables = _script("readme_tables")
    rows = [
        # seed means: two misaligned cells, T lower in one, which also excludes 0
        _row("r", -0.02, low=-0.03, high=-0.01),
        _row("m", +0.05, low=+0.01, high=+0.09),
        # per seed: seed 0 lower in both cells, seed 1 in none
        _row("r", -0.01, 0.0), _row("m", -0.01, 0.0),
        _row("r", +0.01, 1.0), _row("m", +0.02, 1.0),
        # excluded: the training alignment and a secondary FMR
        _row("train", -0.5), _row("r", -0.5, fmr=0.01),
    ]
    table = tables.win_counts_table(pd.DataFrame(rows), 0.001, "recomputed", "train")
    lines = [line for line in table.splitlines() if line.startswith("| net |")]
    assert len(lines) == 2  # crfiqa and "all" (one method)
    cells = [c.strip() for c in lines[-1].strip("|").split("|")]
    assert cells[2] == "all"
    assert cells[3] == "1 of 2"
    assert cells[4] == "1" and cells[5] == "1"  # one beyond on each side
    assert cells[6] == "+0.015"  # median of -0.02 and +0.05
    assert cells[7] == "-0.020 to +0.050"
    assert cells[8] == "s0: 2, s1: 0"
