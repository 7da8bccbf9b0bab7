"""params.yaml loading with DVC-style `-S key.path=value` overrides.

Every stage reads its own section, so `dvc exp run -S landmarks.detectors=[...]` and
`aikd ... -S key=value` change the same values.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PARAMS = Path("params.yaml")


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ValueError(f"cannot set {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(params: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of `params` with each `a.b.c=value` applied (value parsed as YAML)."""
    out = copy.deepcopy(dict(params))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        _set_dotted(out, key.strip(), yaml.safe_load(raw))
    return out


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read params.yaml (a mapping) and apply overrides."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: params file not found")
    with p.open() as fh:
        params = yaml.safe_load(fh) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{p}: top level must be a mapping, got {type(params).__name__}")
    return apply_overrides(params, overrides)


def section(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One stage's params section, with a clear error when it is missing."""
    if name not in params or not isinstance(params[name], Mapping):
        raise KeyError(f"params has no section {name!r} (sections: {', '.join(params)})")
    return dict(params[name])
