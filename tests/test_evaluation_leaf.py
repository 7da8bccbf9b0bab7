"""The metric is a leaf: training may import it without the report, tables, plots or MLflow.

Run in a fresh interpreter, since this test session may already have loaded them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

HEAVY = ("aikd.evaluation.report", "aikd.evaluation.summary", "aikd.evaluation.tables",
         "aikd.evaluation.plots", "matplotlib", "mlflow")


def _loaded_after(imports: str) -> tuple[Path, list[str]]:
    """(file of aikd.evaluation.edc, the HEAVY modules loaded) after running ``imports``."""
    code = (f"import sys; {imports}; import aikd.evaluation.edc as e; print(e.__file__); "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout, not an installed copy
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True, env=env)
    lines = out.stdout.splitlines()
    return Path(lines[0]), lines[1].split() if len(lines) > 1 else []


def test_edc_and_cells_import_nothing_of_the_report() -> None:
    edc_file, heavy = _loaded_after("import aikd.evaluation.edc; import aikd.evaluation.cells")
    assert edc_file.resolve().is_relative_to(REPO)
    assert heavy == []


def test_the_probe_sees_the_report_when_it_is_loaded() -> None:
    _, heavy = _loaded_after("import aikd.evaluation.report")
    assert {"aikd.evaluation.report", "aikd.evaluation.tables"} <= set(heavy)
