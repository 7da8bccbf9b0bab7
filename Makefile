# Two entry points for a fresh machine: `make repro` (the main job) and `make test`.
SHELL := /bin/bash
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export RAY_USAGE_STATS_ENABLED := 0
export GX_ANALYTICS_ENABLED := False
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: env repro test test-all smoke lint

env:
	bash scripts/setup_env.sh

repro: env
	dvc repro

test: env
	python -m pytest -m "not slow" -q

smoke: env
	bash scripts/smoke.sh

test-all: env
	python -m pytest -q

lint: env
	ruff check aikd pipelines tests benchmarks
