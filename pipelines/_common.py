"""Shared glue for the DVC stage scripts: params with `-S` overrides and the stage's section."""

from __future__ import annotations

import argparse
from typing import Any

from aikd.config import load_params


def stage_args(description: str, *positional: str) -> tuple[argparse.Namespace, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=description)
    for name in positional:
        parser.add_argument(name)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    return args, load_params(args.params, args.set)
