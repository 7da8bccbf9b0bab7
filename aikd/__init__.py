"""aikd: alignment-invariant face image quality assessment (AI-KD) as a tracked toolkit."""

import os

# Telemetry off for every tool the stages touch (a user may still opt in by exporting
# the variable before import).
for _key, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "GX_ANALYTICS_ENABLED": "False",
    "NO_ALBUMENTATIONS_UPDATE": "1",
}.items():
    os.environ.setdefault(_key, _value)

__version__ = "0.1.0"
