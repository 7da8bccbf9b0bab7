"""`aikd score` input errors: a `UsageError` whose one line names the problem and the fix.

The CLI wrapper (exit code 2, no traceback) is tested with aikd.cli; these call the
command body the CLI dispatches to, outside a project (no params.yaml).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pytest

from aikd.config import add_params_options
from aikd.errors import UsageError
from aikd.registry.command import add_score_arguments, run_score


def score(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_score_arguments(parser)
    add_params_options(parser)
    return run_score(parser.parse_args(list(argv)))


@pytest.fixture()
def outside_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "grey.jpg"), np.full((64, 64, 3), 128, np.uint8))
    return tmp_path


def one_line(err: pytest.ExceptionInfo[UsageError], *needles: str) -> None:
    text = str(err.value)
    assert "\n" not in text and err.value.exit_code == 2
    for needle in needles:
        assert needle in text, text


def test_missing_model_says_how_to_make_it(outside_project: Path) -> None:
    with pytest.raises(UsageError) as err:
        score("--model", "models/sddfiqa-T/model.pt", "--images", "photos")
    one_line(err, "models/sddfiqa-T/model.pt: model not found", "make repro",
             "dvc repro distill@sddfiqa-T", "dvc repro register")


def test_missing_input_folder(outside_project: Path) -> None:
    with pytest.raises(UsageError) as err:
        score("--model", "models/sddfiqa-T/model.pt", "--images", "no-such-folder")
    one_line(err, "no-such-folder: no such image folder or manifest", "pass a folder")


def test_empty_input_folder(outside_project: Path) -> None:
    (outside_project / "empty").mkdir()
    (outside_project / "empty" / "notes.txt").write_text("not a photo")
    with pytest.raises(UsageError) as err:
        score("--model", "models/sddfiqa-T/model.pt", "--images", "empty")
    one_line(err, "empty: no images found", ".jpg")
