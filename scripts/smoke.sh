#!/usr/bin/env bash
# Run the whole DVC pipeline with profiles/smoke.yaml in a temporary copy of the project.
# Usage: scripts/smoke.sh [KEEP_DIR]   (the copy is deleted afterwards unless KEEP_DIR is given)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d /tmp/aikd-smoke.XXXXXX)}"
mkdir -p "$work"
cd "$repo"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work"
cd "$work"
rm -f dvc.lock
# DVC and the MLflow tags want a git repository; a throwaway one with the copied files.
git init -q && git add -A && git -c user.name=smoke -c user.email=smoke@localhost commit -qm smoke
"$repo/.venv/bin/python" - "$repo" <<'PY'
import sys
from pathlib import Path

import yaml

repo = Path(sys.argv[1])
params = yaml.safe_load(Path("params.yaml").read_text())
smoke = yaml.safe_load((repo / "profiles" / "smoke.yaml").read_text())


def merge(base, over):
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and k not in ("runs", "benchmarks"):
            merge(base[k], v)
        else:
            base[k] = v


merge(params, smoke)
for ds in params["datasets"].values():
    if (repo / ds["root"]).exists():  # the demo data sits beside the original checkout
        ds["root"] = str((repo / ds["root"]).resolve())
    # other roots are made in the copy (the drill data set)
params["register"]["example_image"] = str((repo / params["register"]["example_image"]).resolve())
params["mlflow"]["tracking_uri"] = f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}"
Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
PY
mkdir -p mlruns
export PATH="$repo/.venv/bin:$PATH" MLFLOW_TRACKING_URI="sqlite:///$work/mlruns/mlflow.db" \
  PYTHONPATH="$work"  # the copy's code, not the editable install's
start=$(date +%s)
python scripts/drill_data.py make
dvc repro
git add -A >/dev/null && dvc status
dvc metrics show
python scripts/drill_data.py check
echo "smoke: whole DAG in $(( $(date +%s) - start )) s in $work"
if [ -z "${1:-}" ]; then rm -rf "$work"; fi
