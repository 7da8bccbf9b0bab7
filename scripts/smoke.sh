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
# The Ray engine (docs/engine.md) on one stage: the drill's embed again, on a Ray of two
# one-thread actors, into another folder; its table must be the DAG's (local engine).
python pipelines/embed.py drill dlib -S engine.kind=ray -S engine.batch_size=8 \
  -S embed.out_dir=ray_check
python - <<'PY'
import numpy as np
import pandas as pd
import yaml

from aikd.data.io import read_vectors

backbone = yaml.safe_load(open("params.yaml"))["embed"]["backbone"]
local_meta, local = read_vectors(f"data/embeddings/dlib/drill_{backbone}.parquet")
ray_meta, on_ray = read_vectors(f"ray_check/dlib/drill_{backbone}.parquet")
assert ray_meta["path"].tolist() == local_meta["path"].tolist(), "ray: other rows"
diff = float(np.abs(on_ray - local).max()) if len(local) else 0.0
assert diff <= 1e-4, f"ray engine: embeddings differ from the local engine's by {diff}"
failures = [pd.read_csv(f"{d}/dlib/drill_{backbone}_failures.csv")
            for d in ("data/embeddings", "ray_check")]
pd.testing.assert_frame_equal(failures[1], failures[0])  # same bad images, same messages
print(f"smoke: ray engine embed of drill = local ({len(local)} faces, max |diff| {diff:.1e})")
PY
echo "smoke: whole DAG in $(( $(date +%s) - start )) s in $work"
if [ -z "${1:-}" ]; then rm -rf "$work"; fi
