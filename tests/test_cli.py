"""The `aikd` command line: one table of commands, -S overrides, errors as one line."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aikd import cli
from aikd.cli import COMMANDS, build_parser, main
from aikd.config import section
from aikd.errors import AikdError, UsageError

REPO = Path(__file__).resolve().parents[1]

#: Where each command's function lives (the team's layout); the table must point there.
EXPECTED_TARGETS = {
    "manifest": "aikd.data.stage:manifest_stage",
    "landmarks": "aikd.landmarks.stage:landmarks_stage",
    "landmark-report": "aikd.landmarks.stage:landmark_report_stage",
    "embed": "aikd.embed.stage:embed_stage",
    "labels": "aikd.fiqa.stage:labels_stage",
    "distill": "aikd.distill.stage:distill_stage",
    "pairs": "aikd.evaluation.stage:pairs_stage",
    "evaluate": "aikd.evaluation.stage:evaluate_stage",
    "report": "aikd.evaluation.report:report_stage",
    "quality": "aikd.quality.stage:quality_stage",
    "tune": "aikd.tuning.command:run",
    "register": "aikd.registry.command:run_register",
    "score": "aikd.registry.command:run_score",
    "detectors": "aikd.landmarks:available_detectors",
}


def test_table_names_every_command_and_its_function() -> None:
    assert {n: c.target for n, c in COMMANDS.items()} == EXPECTED_TARGETS
    assert all(c.kind in cli._RUNNERS for c in COMMANDS.values())


def test_every_command_target_resolves_to_a_function() -> None:
    """The lazy "module:function" references point at functions that exist (a moved
    function must not surface as an ImportError only when a user runs the command)."""
    for name, cmd in COMMANDS.items():
        assert callable(cli.resolve(cmd.target)), name
        if cmd.arguments:
            assert callable(cli.resolve(cmd.arguments)), name


def test_stage_commands_parse_positionals_and_overrides() -> None:
    p = build_parser()
    a = p.parse_args(["landmarks", "lfw", "retinaface", "mtcnn", "-S", "landmarks.threads=1"])
    assert (a.command, a.dataset, a.detector, a.set) == (
        "landmarks", "lfw", ["retinaface", "mtcnn"], ["landmarks.threads=1"])
    a = p.parse_args(["distill", "sddfiqa-T", "crfiqa-B", "--restart"])
    assert a.run == ["sddfiqa-T", "crfiqa-B"] and a.restart
    assert not p.parse_args(["distill", "serfiq-T"]).restart
    assert p.parse_args(["evaluate", "--params", "other.yaml"]).params == "other.yaml"
    for cmd in ("register", "report", "detectors"):
        assert p.parse_args([cmd]).command == cmd


def test_stage_commands_refuse_missing_arguments() -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["quality", "lfw"])  # no detector
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(["distill"])  # no run


def test_help_imports_no_stage_module() -> None:
    """`aikd --help` builds the whole table without importing torch or any stage."""
    code = ("import sys; from aikd.cli import build_parser; build_parser().format_help(); "
            "heavy = [m for m in ('torch', 'mlflow', 'pandas', 'aikd.registry', 'aikd.tuning')"
            " if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, env=_env())


# ---------------------------------------------------------------------------------------
# Dispatch, through a fake module the table points at.


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A module ``fake_aikd`` whose functions record their calls; params.yaml in tmp_path."""
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    mod = types.ModuleType("fake_aikd")

    def recorder(name: str):
        def fn(*args: Any, **kwargs: Any) -> int:
            calls.append((name, args, kwargs))
            return 0
        return fn

    for name in ("stage", "run"):
        setattr(mod, name, recorder(name))
    mod.listing = lambda: ["alpha", "beta"]
    mod.add_arguments = lambda p: p.add_argument("--fake-opt", default="x")
    monkeypatch.setitem(sys.modules, "fake_aikd", mod)
    (tmp_path / "params.yaml").write_text("seed: 0\ndatasets: {lfw: {kind: lfw, root: .}}\n")
    monkeypatch.chdir(tmp_path)
    yield {"calls": calls, "module": mod}


def _point(monkeypatch: pytest.MonkeyPatch, command: str, target: str, **changes: Any) -> None:
    monkeypatch.setitem(COMMANDS, command,
                        dataclasses.replace(COMMANDS[command], target=target, **changes))


def test_stage_runs_once_per_item_with_overrides(fake, monkeypatch) -> None:
    _point(monkeypatch, "landmarks", "fake_aikd:stage")
    assert main(["landmarks", "lfw", "retinaface", "mtcnn", "-S", "seed=3"]) == 0
    assert [c[1][1:] for c in fake["calls"]] == [("lfw", "retinaface"), ("lfw", "mtcnn")]
    assert all(c[1][0]["seed"] == 3 for c in fake["calls"])


def test_stage_keyword_arguments_and_single_call(fake, monkeypatch) -> None:
    _point(monkeypatch, "distill", "fake_aikd:stage")
    _point(monkeypatch, "evaluate", "fake_aikd:stage")
    assert main(["distill", "a-T", "b-B", "--restart"]) == 0
    assert main(["distill", "c-T"]) == 0
    assert main(["evaluate"]) == 0
    assert [(c[1][1:], c[2]) for c in fake["calls"]] == [
        (("a-T",), {"resume": False}), (("b-B",), {"resume": False}),
        (("c-T",), {"resume": True}), ((), {})]


def test_main_command_gets_its_own_arguments_and_exit_code(fake, monkeypatch) -> None:
    _point(monkeypatch, "tune", "fake_aikd:run", arguments="fake_aikd:add_arguments")
    fake["module"].run = lambda args: 3 if args.fake_opt == "y" and args.set == ["a=1"] else 0
    assert main(["tune", "--fake-opt", "y", "-S", "a=1"]) == 3
    with pytest.raises(SystemExit):  # the hook runs only for the command being run
        build_parser().parse_args(["tune", "--fake-opt", "y"])


def test_list_command_prints_lines(fake, monkeypatch, capsys) -> None:
    _point(monkeypatch, "detectors", "fake_aikd:listing")
    assert main(["detectors"]) == 0
    assert capsys.readouterr().out == "alpha\nbeta\n"


# ---------------------------------------------------------------------------------------
# Errors: one line on stderr, exit 2 for bad usage, 1 for failures, traceback with --debug.


def _raise(exc: BaseException):
    def fn(*args: Any, **kwargs: Any) -> None:
        raise exc
    return fn


def _missing_section(params: dict[str, Any]) -> None:
    section(params, "nope")  # KeyError raised by aikd.config: a bad param


@pytest.mark.parametrize(("exc", "code", "line"), [
    (UsageError("models/x/model.pt: not found; make it with `make repro`"), 2,
     "aikd: error: models/x/model.pt: not found; make it with `make repro`"),
    (AikdError("training diverged"), 1, "aikd: error: training diverged"),
    (FileNotFoundError("data/x.parquet: not found"), 2, "aikd: error: data/x.parquet: not found"),
    (RuntimeError("boom"), 1,
     "aikd: error: RuntimeError: boom (run with --debug for the traceback)"),
    (ValueError("a library's complaint"), 1,  # not raised by aikd code: unexpected
     "aikd: error: ValueError: a library's complaint (run with --debug for the traceback)"),
    (AikdError("FAILED\nrow 1\nrow 2"), 1, "aikd: error: FAILED (+2 more lines with --debug)"),
])
def test_errors_print_one_line_and_exit_code(fake, monkeypatch, capsys, exc, code, line) -> None:
    fake["module"].stage = _raise(exc)
    _point(monkeypatch, "evaluate", "fake_aikd:stage")
    assert main(["evaluate"]) == code
    err = capsys.readouterr().err
    assert err == line + "\n"


def test_bad_param_named_by_aikd_is_usage_error(fake, monkeypatch, capsys) -> None:
    fake["module"].stage = _missing_section
    _point(monkeypatch, "evaluate", "fake_aikd:stage")
    assert main(["evaluate"]) == 2
    assert capsys.readouterr().err.startswith("aikd: error: params has no section 'nope'")
    assert main(["evaluate", "--params", "missing.yaml"]) == 2
    assert capsys.readouterr().err == "aikd: error: missing.yaml: params file not found\n"


def test_debug_shows_the_traceback(fake, monkeypatch) -> None:
    fake["module"].stage = _raise(UsageError("bad"))
    _point(monkeypatch, "evaluate", "fake_aikd:stage")
    for argv in (["--debug", "evaluate"], ["evaluate", "--debug"]):
        with pytest.raises(UsageError):
            main(argv)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def _aikd(*argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aikd", *argv], cwd=cwd, env=_env(**env),
                          capture_output=True, text=True, timeout=600)


def _one_line(res: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == code, res.stderr
    assert len(lines) == 1 and lines[0].startswith("aikd: error: "), res.stderr
    assert "Traceback" not in res.stderr
    assert all(n in lines[0] for n in needles), lines[0]


def test_python_m_aikd_reports_a_missing_params_file(tmp_path: Path) -> None:
    _one_line(_aikd("evaluate", "--params", "nope.yaml", cwd=tmp_path), 2, "nope.yaml")
    res = _aikd("--debug", "evaluate", "--params", "nope.yaml", cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" in res.stderr


def test_python_m_aikd_reports_an_unknown_dataset_in_one_line(tmp_path: Path) -> None:
    """A real stage: its imports (great_expectations, mlflow) log nothing at INFO."""
    (tmp_path / "params.yaml").write_text(
        "seed: 0\nmanifest: {out_dir: m}\ndatasets: {lfw: {kind: lfw, root: lfw}}\n")
    _one_line(_aikd("manifest", "nope", cwd=tmp_path), 2,
              "dataset 'nope' is not in params 'datasets' (lfw)")


# ---------------------------------------------------------------------------------------
# `aikd score` input errors (aikd.registry.command.run_score raises UsageError for them).


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (random-head) quality model file, so the folder checks are reached."""
    import numpy as np
    import torch

    from aikd.distill.data import LabelNorm
    from aikd.distill.model import AIKDStudent, save_quality_model
    from aikd.models.registry import load_backbone

    torch.manual_seed(0)
    student = AIKDStudent(load_backbone("dlib_resnet"), "head").eval()
    return save_quality_model(
        tmp_path_factory.mktemp("model") / "model.pt", student, backbone_name="dlib_resnet",
        label_norm=LabelNorm.fit(np.linspace(0.0, 1.0, 50), "rank"), config={"seed": 0})


@pytest.fixture
def photos(tmp_path: Path, lfw_root: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(next((lfw_root / "images").rglob("*.jpg")), folder / "face.jpg")
    return folder


def test_score_missing_model(tmp_path: Path, photos: Path) -> None:
    _one_line(_aikd("score", "--model", "models/nope/model.pt", "--images", str(photos),
                    cwd=tmp_path), 2, "models/nope/model.pt")


def test_score_missing_folder(tmp_path: Path, model_pt: Path) -> None:
    _one_line(_aikd("score", "--model", str(model_pt), "--images", "no_such_folder",
                    cwd=tmp_path), 2, "no_such_folder")


def test_score_empty_folder(tmp_path: Path, model_pt: Path) -> None:
    (tmp_path / "empty").mkdir()
    _one_line(_aikd("score", "--model", str(model_pt), "--images", "empty", cwd=tmp_path),
              2, "empty")


def test_score_unknown_registered_model(tmp_path: Path, photos: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _one_line(_aikd("score", "--model", "models:/nope@champion", "--images", str(photos),
                    cwd=tmp_path, MLFLOW_TRACKING_URI=uri), 2, "nope")
