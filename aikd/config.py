"""params.yaml loading with DVC-style `-S key.path=value` overrides.

Every stage reads its own section, so `dvc exp run -S landmarks.detectors=[...]` and
`aikd ... -S key=value` change the same values.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

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


def global_seed(params: Mapping[str, Any]) -> int:
    """params.yaml's top-level ``seed``, which every random choice of every stage derives from."""
    if "seed" not in params:
        raise KeyError("params has no top-level 'seed' (params.yaml sets `seed: 0`)")
    return int(params["seed"])


def add_params_options(parser: argparse.ArgumentParser) -> None:
    """The ``--params`` / ``-S key=value`` options every stage command and script takes."""
    parser.add_argument("--params", default=str(DEFAULT_PARAMS),
                        help="params file (default params.yaml)")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param like `dvc exp run -S`, e.g. -S embed.batch_size=32")


def from_mapping(cls: type[T], values: Mapping[str, Any] | None, where: str,
                 *, ignore: Iterable[str] = ()) -> T:
    """Build the dataclass ``cls`` from ``values``; ``where`` names the section in errors.

    Unknown keys fail with the key named (a typo must not fall back to a default);
    a field without a default that ``values`` lacks fails the same way. Keys in
    ``ignore`` belong to the section but not to this dataclass."""
    values = {k: v for k, v in dict(values or {}).items() if k not in set(ignore)}
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"params {where}: unknown key(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(fields))})")
    missing = sorted(name for name, f in fields.items() if name not in values and f.init
                     and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    if missing:
        raise ValueError(f"params {where}: missing key(s) {', '.join(missing)}")
    return cls(**values)


def from_section(cls: type[T], params: Mapping[str, Any], name: str,
                 *, ignore: Iterable[str] = ()) -> T:
    """One stage's typed settings: ``cls`` built from params.yaml's ``name`` section."""
    return from_mapping(cls, section(params, name), name, ignore=ignore)
