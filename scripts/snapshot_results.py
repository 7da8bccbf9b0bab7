"""Keep the results of a DVC experiment in git, beside the default run's.

Usage (right after ``dvc exp run``, while the workspace holds the experiment's outputs)::

    python scripts/snapshot_results.py three_seeds --exp seeds3 \\
        --command "dvc exp run -S 'train_seeds=[0,1,2]'" \\
        [--timing benchmarks/results/dag_time_seeds.json]

Why: the default ``dvc repro`` must fit its time budget, so some results (three training
seeds, docs/seeds.md) come from a documented ``dvc exp run`` instead. DVC keeps an
experiment as a git ref of the machine it ran on and its outputs in that machine's cache;
neither travels with a clone. This copies the files a reader and
``scripts/readme_tables.py --root`` need into ``reports/snapshots/<name>/`` with the
workspace's own layout (params.yaml, dvc.lock, reports/evaluation, metrics, the evaluation
tables, every model's metrics.json) and writes ``SNAPSHOT.json``: where they came from.
Model weights are not copied (``dvc exp apply <exp>`` restores them on the machine that
ran it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import yaml

#: Workspace files a snapshot keeps (globs, relative to the repository root).
KEEP = (
    "params.yaml",
    "dvc.lock",
    "metrics/*.json",
    "reports/evaluation/**/*",
    "reports/landmarks/alignment_fnmr.csv",
    "reports/landmarks/alignment_fnmr.md",
    "data/evaluation/*.parquet",
    "data/evaluation/*.json",
    "models/*/seed*/metrics.json",
    "models/*/seed*/history.csv",
)


def snapshot_files(root: Path) -> list[Path]:
    """The files of ``KEEP`` that exist under ``root``, relative to it, sorted."""
    found = {p.relative_to(root) for pattern in KEEP for p in root.glob(pattern) if p.is_file()}
    return sorted(found)


def take_snapshot(root: Path, out: Path, source: dict[str, object]) -> list[Path]:
    """Copy ``snapshot_files(root)`` to ``out`` (emptied first) and write SNAPSHOT.json."""
    files = snapshot_files(root)
    if not any(f.name == "params.yaml" for f in files):
        raise FileNotFoundError(f"{root}: no params.yaml, not a workspace")
    if out.exists():
        shutil.rmtree(out)
    for f in files:
        (out / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, out / f)
    params = yaml.safe_load((root / "params.yaml").read_text())
    meta = {**source, "train_seeds": params.get("train_seeds"),
            "taken": datetime.now(UTC).isoformat(timespec="seconds"),
            "files": len(files)}
    (out / "SNAPSHOT.json").write_text(json.dumps(meta, indent=2) + "\n")
    return files


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True,
                          check=False).stdout.strip()


def experiment_commit(name: str) -> str:
    """The commit DVC saved experiment ``name`` as (refs/exps/<base>/<name>), or ''."""
    refs = _git("for-each-ref", "refs/exps", "--format=%(objectname) %(refname)")
    hits = [line.split()[0] for line in refs.splitlines() if line.endswith(f"/{name}")]
    return hits[-1] if hits else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name", help="reports/snapshots/<name>/")
    ap.add_argument("--exp", default="", help="the DVC experiment's name")
    ap.add_argument("--command", required=True, help="the command that produced it")
    ap.add_argument("--timing", type=Path, default=None,
                    help="benchmarks/dag_time.py's JSON of the same run (copied in)")
    args = ap.parse_args()
    out = Path("reports/snapshots") / args.name
    source: dict[str, object] = {
        "command": args.command, "dvc_experiment": args.exp,
        "base_commit": _git("rev-parse", "HEAD"),
        "experiment_commit": experiment_commit(args.exp) if args.exp else "",
    }
    if args.timing is not None:
        timing = json.loads(args.timing.read_text())
        source["wall_minutes"] = timing.get("wall_minutes")
        source["timing_file"] = str(args.timing)
    files = take_snapshot(Path("."), out, source)
    if args.timing is not None:
        shutil.copy2(args.timing, out / "dag_time.json")
    print(f"{out}: {len(files)} files")


if __name__ == "__main__":
    main()
