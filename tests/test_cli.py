"""The `aikd` command line: every pipeline stage is a subcommand with -S overrides."""

from __future__ import annotations

import pytest

from aikd.cli import build_parser


def test_stage_commands_parse_positionals_and_overrides() -> None:
    p = build_parser()
    a = p.parse_args(["landmarks", "lfw", "retinaface", "mtcnn", "-S", "landmarks.threads=1"])
    assert (a.command, a.dataset, a.detector, a.set) == (
        "landmarks", "lfw", ["retinaface", "mtcnn"], ["landmarks.threads=1"])
    a = p.parse_args(["distill", "sddfiqa-T", "crfiqa-B", "--restart"])
    assert a.run == ["sddfiqa-T", "crfiqa-B"] and a.restart
    assert not p.parse_args(["distill", "serfiq-T"]).restart
    assert p.parse_args(["evaluate", "--params", "other.yaml"]).params == "other.yaml"
    for cmd in ("tune", "register", "report", "detectors"):
        assert p.parse_args([cmd]).command == cmd


def test_stage_commands_refuse_missing_arguments() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["quality", "lfw"])  # no detector
    with pytest.raises(SystemExit):
        build_parser().parse_args(["distill"])  # no run
