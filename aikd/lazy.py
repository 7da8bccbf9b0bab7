"""Lazy package exports: ``from aikd.landmarks import get_detector`` without importing
every submodule of the package.

A package ``__init__`` that imported all its submodules made every user of one of them
depend on all of them (the embed stage re-ran when the landmark report changed). With
lazy exports, importing a package runs nothing but its ``__init__``; a name is imported
from its submodule on first access. Library code imports from the submodules directly
(tests/test_dvc_deps.py checks it), so DVC's stage deps follow the code that really runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]
                 ) -> tuple[Callable[[str], Any], list[str]]:
    """``(__getattr__, __all__)`` for ``package`` from ``{submodule: [names]}``."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(where)
