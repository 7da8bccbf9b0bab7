"""dvc.yaml must list, for every stage, the library code its entry point runs.

A stage whose code is not among its deps is not re-run when that code changes, and its
outputs then silently disagree with the code that claims to have made them. The test
follows every ``aikd`` import (module level and inside functions) from each stage's
``pipelines/*.py`` script and checks that each file reached is covered by a dep.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

#: Reached by every stage but without influence on what a stage computes: the package
#: marker, params loading (the params themselves are deps), MLflow logging, the file
#: layout (the paths are spelled out in dvc.yaml itself) and the error classes (messages).
NOT_DEPS = {"aikd/__init__.py", "aikd/config.py", "aikd/tracking.py", "aikd/paths.py",
            "aikd/errors.py"}


_MODULE_NAME = re.compile(r"^aikd(\.[a-z_][a-z0-9_]*)+$")


def _module_file(name: str) -> Path | None:
    base = REPO / Path(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imports(path: Path) -> set[str]:
    """Dotted names of the aikd modules a file imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "aikd"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "aikd":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if _module_file(f"{node.module}.{a.name}")}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and _MODULE_NAME.match(node.value) and _module_file(node.value):
            found.add(node.value)  # imported by name (importlib), e.g. the detector registry
    return found


def code_closure(script: Path) -> set[str]:
    """Repository-relative files of every aikd module reachable from ``script``."""
    todo, seen = [script], set()
    while todo:
        f = todo.pop()
        rel = f.relative_to(REPO).as_posix()
        if rel in seen:
            continue
        seen.add(rel)
        for name in _imports(f):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b too
                mod = _module_file(".".join(parts[:i]))
                if mod is not None:
                    todo.append(mod)
    return seen


def _stages() -> list[tuple[str, str, list[str]]]:
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    out = []
    for name, st in spec.items():
        body = st.get("do", st)
        deps = [d if isinstance(d, str) else next(iter(d)) for d in body.get("deps", [])]
        out.append((name, body["cmd"], deps))
    return out


STAGES = _stages()


@pytest.mark.parametrize(("stage", "cmd", "deps"), STAGES, ids=[s[0] for s in STAGES])
def test_stage_deps_cover_the_code_it_runs(stage, cmd, deps):
    script = re.search(r"python (pipelines/\S+\.py)", cmd)
    assert script, f"{stage}: cmd {cmd!r} is not `python pipelines/<stage>.py ...`"
    code = code_closure(REPO / script.group(1))
    assert script.group(1) in deps, f"{stage}: its own script is not a dep"
    missing = sorted(f for f in code - NOT_DEPS
                     if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))
    assert not missing, f"dvc.yaml stage {stage!r} runs code it does not depend on: {missing}"


def test_closure_follows_imports_inside_functions():
    """The walker sees lazy imports: the manifest stage reaches the subset sampler that
    manifest_stage imports inside its body, and nothing of the training code."""
    code = code_closure(REPO / "pipelines" / "manifest.py")
    assert "aikd/data/manifest.py" in code and "aikd/data/stage.py" in code
    assert not any(f.startswith("aikd/distill/") for f in code)


def _code_files(dep: str) -> set[str]:
    """The .py files a code dep stands for (itself, or every file below a folder)."""
    path = REPO / dep
    if path.is_file():
        return {dep} if dep.endswith(".py") else set()
    return {p.relative_to(REPO).as_posix() for p in path.rglob("*.py")}


@pytest.mark.parametrize(("stage", "cmd", "deps"), STAGES, ids=[s[0] for s in STAGES])
def test_stage_deps_are_only_the_code_it_runs(stage, cmd, deps):
    """The converse: a code dep the stage never runs makes it re-run for nothing (a change
    to the report's Markdown must not re-train the models), so every file a code dep
    covers must be reached from the stage's script."""
    script = re.search(r"python (pipelines/\S+\.py)", cmd)
    code = code_closure(REPO / script.group(1))
    extra = sorted(f for d in deps if d.startswith(("aikd/", "pipelines/"))
                   for f in _code_files(d) - code)
    assert not extra, f"dvc.yaml stage {stage!r} depends on code it never runs: {extra}"


def test_training_does_not_depend_on_the_report():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("distill", "quality"):
        deps = spec[name].get("do", spec[name])["deps"]
        assert "aikd/evaluation" not in deps and "aikd/evaluation/report.py" not in deps, name


def test_no_stage_code_imports_a_lazy_package_export():
    """Package ``__init__`` files export names lazily (aikd.lazy), which this walker cannot
    follow: the library must import such names from their submodules, or a stage's deps
    would miss the file that defines them."""
    lazy = {f"aikd.{p.parent.name}" for p in (REPO / "aikd").glob("*/__init__.py")
            if "lazy_exports(" in p.read_text()}
    offenders = []
    for path in [*(REPO / "aikd").rglob("*.py"), *(REPO / "pipelines").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in lazy:
                offenders += [f"{path.relative_to(REPO)}: from {node.module} import {a.name}"
                              for a in node.names if not _module_file(f"{node.module}.{a.name}")]
    assert not offenders, offenders
