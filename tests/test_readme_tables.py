"""scripts/readme_tables.py counts the README's wins from the differences, not by hand."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
