"""`aikd <command>`: the pipeline stages and tools from the command line.

Every command reads params.yaml (or --params) and accepts `-S key.path=value` overrides,
exactly like `dvc exp run -S`. Errors are one line (`aikd: error: ...`, exit 2 for bad
usage, 1 for a failure); `aikd --debug <command>` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aikd.config import add_params_options, load_params
from aikd.errors import AikdError


@dataclass(frozen=True)
class Arg:
    """A positional argument; the one with ``nargs="+"`` is the stage's list of items."""

    name: str
    nargs: str | None = None
    help: str | None = None


@dataclass(frozen=True)
class Command:
    """One row of the command table.

    ``target`` is ``"module:function"``, imported only when the command runs, so
    ``aikd --help`` imports no stage. ``kind`` says how it is called:

    - ``stage``: ``target(params, *positionals, **kwargs(args))``, once per item of the
      ``nargs="+"`` positional (in the order given);
    - ``main``: ``target(args) -> int`` (the exit code); ``arguments`` (also
      ``"module:function"``) adds the command's own options to its parser;
    - ``list``: prints the lines ``target()`` returns.
    """

    help: str
    target: str
    kind: str = "stage"
    args: tuple[Arg, ...] = ()
    flags: tuple[tuple[str, str], ...] = ()  # (option, help) of store_true options
    kwargs: Callable[[argparse.Namespace], dict[str, Any]] | None = None
    arguments: str | None = None


_DATASET = Arg("dataset", None, "data set name from params 'datasets'")
_DETECTORS = Arg("detector", "+", "landmark detector(s); `aikd detectors` lists them")
_EVALUATION = "aikd.evaluation.stage"

#: Every `aikd` command: the parser and the dispatch are both built from this table.
COMMANDS: dict[str, Command] = {
    "manifest": Command(
        "build the parquet manifest of a data set", "aikd.data.stage:manifest_stage",
        args=(Arg("dataset", "+", "data set name(s) from params 'datasets'"),)),
    "landmarks": Command(
        "detect 5 landmarks with one or more detectors",
        "aikd.landmarks.stage:landmarks_stage", args=(_DATASET, _DETECTORS)),
    "landmark-report": Command(
        "detector agreement table and plot", "aikd.landmarks.stage:landmark_report_stage"),
    "embed": Command(
        "cached FR embeddings of aligned faces", "aikd.embed.stage:embed_stage",
        args=(_DATASET, _DETECTORS)),
    "labels": Command(
        "pseudo quality labels of FIQA methods", "aikd.fiqa.stage:labels_stage",
        args=(Arg("method", "+", "serfiq, sddfiqa, crfiqa or csv"),)),
    "distill": Command(
        "train AI-KD (T) / baseline (B) runs from params", "aikd.distill.stage:distill_stage",
        args=(Arg("run", "+", "run name(s) from params distill.runs, <run>@s<seed> for a "
                  "training seed (bare: the first of train_seeds)"),),
        flags=(("--restart", "ignore checkpoints, start over"),),
        kwargs=lambda a: {"resume": not a.restart}),
    "pairs": Command(
        "write a benchmark's verification pairs", f"{_EVALUATION}:pairs_stage",
        args=(Arg("benchmark", "+", "benchmark name(s) from params evaluate.benchmarks"),)),
    "quality": Command(
        "every quality method on a benchmark's faces", "aikd.quality.stage:quality_stage",
        args=(_DATASET, _DETECTORS)),
    "evaluate": Command(
        "pAUC / EDC of every (benchmark, detector, method)", f"{_EVALUATION}:evaluate_stage"),
    "report": Command(
        "tables, EDC figures and metrics/evaluation.json", "aikd.evaluation.report:report_stage"),
    "tune": Command(
        "Ray Tune sweep over the jitter range p and lr (MLflow-tracked)",
        "aikd.tuning.command:run", kind="main", arguments="aikd.tuning.command:add_arguments"),
    "register": Command(
        "register distilled models in the MLflow model registry",
        "aikd.registry.command:run_register", kind="main",
        arguments="aikd.registry.command:add_register_arguments"),
    "score": Command(
        "score raw photos with a registered or local quality model",
        "aikd.registry.command:run_score", kind="main",
        arguments="aikd.registry.command:add_score_arguments"),
    "detectors": Command(
        "list the landmark detectors installed here", "aikd.landmarks:available_detectors",
        kind="list"),
}


def resolve(ref: str) -> Callable[..., Any]:
    """The function a ``"module:function"`` reference names (imports the module)."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``aikd`` parser. Only ``command``'s own ``arguments`` hook is imported and
    applied (the command about to run), so ``aikd --help`` stays fast."""
    parser = argparse.ArgumentParser(prog="aikd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        # `resolve`: a command module may re-declare an option added here, e.g. -S help.
        p = sub.add_parser(name, help=cmd.help, description=cmd.help, conflict_handler="resolve")
        for arg in cmd.args:
            p.add_argument(arg.name, nargs=arg.nargs, help=arg.help)
        for option, flag_help in cmd.flags:
            p.add_argument(option, action="store_true", help=flag_help)
        add_params_options(p)
        # SUPPRESS: `aikd --debug cmd` must not be reset by the subcommand's default.
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks of errors")
        if cmd.arguments and name == command:
            resolve(cmd.arguments)(p)
    return parser


def _run_stage(cmd: Command, args: argparse.Namespace) -> int:
    params = load_params(args.params, args.set)
    fixed = [getattr(args, a.name) for a in cmd.args if a.nargs != "+"]
    items = [getattr(args, a.name) for a in cmd.args if a.nargs == "+"]
    kwargs = cmd.kwargs(args) if cmd.kwargs else {}
    stage = resolve(cmd.target)
    for positionals in [[*fixed, item] for item in items[0]] if items else [fixed]:
        stage(params, *positionals, **kwargs)
    return 0


def _run_main(cmd: Command, args: argparse.Namespace) -> int:
    return int(resolve(cmd.target)(args))


def _run_list(cmd: Command, args: argparse.Namespace) -> int:
    print("\n".join(resolve(cmd.target)()))
    return 0


_RUNNERS: dict[str, Callable[[Command, argparse.Namespace], int]] = {
    "stage": _run_stage, "main": _run_main, "list": _run_list}


def _own_message(exc: BaseException) -> str | None:
    """The message of a KeyError/ValueError that aikd's own code raised to name a bad
    param (unknown data set, run name, key); None for one from a library or a bare key."""
    if not isinstance(exc, KeyError | ValueError) or exc.__traceback__ is None:
        return None
    origin = Path(traceback.extract_tb(exc.__traceback__)[-1].filename).resolve()
    if Path(__file__).resolve().parent not in origin.parents:
        return None
    message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return message if " " in message else None


def error_line(exc: BaseException) -> tuple[str, int]:
    """The one line printed for ``exc`` without --debug, and the exit code.

    AikdError: its message, its ``exit_code`` (UsageError 2, others 1).
    FileNotFoundError: its message, 2 (an input to make or name first).
    KeyError/ValueError raised by aikd code with a message (a bad param): the message, 2.
    Anything else: ``<Type>: <message> (run with --debug for the traceback)``, 1.
    A message of several lines is cut to its first line (the rest shows with --debug).
    """
    own = _own_message(exc)
    if isinstance(exc, AikdError):
        message, code = str(exc), exc.exit_code
    elif isinstance(exc, FileNotFoundError):
        message, code = str(exc), 2
    elif own is not None:
        message, code = own, 2
    else:
        message, code = f"{type(exc).__name__}: {exc} (run with --debug for the traceback)", 1
    lines = message.strip().splitlines() or [type(exc).__name__]
    more = f" (+{len(lines) - 1} more lines with --debug)" if len(lines) > 1 else ""
    return f"aikd: error: {lines[0]}{more}", code


def _command_in(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (its first word that is one), before parsing."""
    return next((a for a in argv if a in COMMANDS), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The stages' progress at INFO; libraries (great_expectations, mlflow) only warnings.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aikd").setLevel(logging.INFO)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # mlflow sets up its own handler
    debug = "--debug" in argv
    try:
        args = build_parser(_command_in(argv)).parse_args(argv)
        return _RUNNERS[COMMANDS[args.command].kind](COMMANDS[args.command], args)
    except Exception as exc:  # noqa: BLE001 -- the CLI's one place that reports errors
        if debug:
            raise
        line, code = error_line(exc)
        print(line, file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
