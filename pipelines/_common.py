"""Shared glue for the DVC stage scripts: params with `-S` overrides and the stage's section."""

from __future__ import annotations

import argparse
from typing import Any

from aikd.config import add_params_options, load_params


def stage_args(description: str, *positional: str) -> tuple[argparse.Namespace, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=description)
    for name in positional:
        parser.add_argument(name)
    add_params_options(parser)
    args = parser.parse_args()
    return args, load_params(args.params, args.set)
