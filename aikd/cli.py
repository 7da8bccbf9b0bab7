"""`aikd <command>`: the pipeline stages and tools from the command line.

Every command reads params.yaml (or --params) and accepts `-S key.path=value` overrides,
exactly like `dvc exp run -S`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from aikd.config import load_params


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a param, e.g. -S landmarks.batch_size=64")


#: (command, help, [(positional, nargs, help)]) of the commands that run a pipeline stage.
_STAGE_COMMANDS: list[tuple[str, str, list[tuple[str, str | None, str | None]]]] = [
    ("manifest", "build the parquet manifest of a data set",
     [("dataset", "+", "data set name(s) from params 'datasets'")]),
    ("landmarks", "detect 5 landmarks with one or more detectors",
     [("dataset", None, None), ("detector", "+", None)]),
    ("landmark-report", "detector agreement table and plot", []),
    ("embed", "cached FR embeddings of aligned faces",
     [("dataset", None, None), ("detector", "+", None)]),
    ("labels", "pseudo quality labels of FIQA methods",
     [("method", "+", "serfiq, sddfiqa, crfiqa or csv")]),
    ("distill", "train AI-KD (T) / baseline (B) runs from params",
     [("run", "+", "run name(s) from params distill.runs")]),
    ("pairs", "write a benchmark's verification pairs", [("benchmark", "+", None)]),
    ("quality", "every quality method on a benchmark's faces",
     [("dataset", None, None), ("detector", "+", None)]),
    ("evaluate", "pAUC / EDC of every (benchmark, detector, method)", []),
    ("report", "tables, EDC figures and metrics/evaluation.json", []),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aikd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    for name, help_text, positionals in _STAGE_COMMANDS:
        p = sub.add_parser(name, help=help_text)
        for arg, nargs, arg_help in positionals:
            p.add_argument(arg, nargs=nargs, help=arg_help)
        if name == "distill":
            p.add_argument("--restart", action="store_true",
                           help="ignore checkpoints, start over")
        _common(p)

    from aikd.registry import add_cli as add_registry_cli
    from aikd.tuning import add_cli as add_tune_cli

    add_tune_cli(sub)
    add_registry_cli(sub)  # `register` and `score`

    p = sub.add_parser("detectors", help="list the landmark detectors installed here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "detectors":
        from aikd.landmarks import available_detectors

        print("\n".join(available_detectors()))
        return 0
    if args.command == "tune":
        from aikd.tuning import run_cli

        return run_cli(args)
    if args.command in ("register", "score"):  # `score` also runs outside a project
        from aikd.registry import run_cli as run_registry_cli

        return run_registry_cli(args)
    params = load_params(args.params, args.set)
    if args.command == "manifest":
        from aikd.data.stage import manifest_stage

        for ds in args.dataset:
            manifest_stage(params, ds)
    elif args.command == "landmarks":
        from aikd.landmarks.stage import landmarks_stage

        for det in args.detector:
            landmarks_stage(params, args.dataset, det)
    elif args.command == "embed":
        from aikd.embed import embed_stage

        for det in args.detector:
            embed_stage(params, args.dataset, det)
    elif args.command == "landmark-report":
        from aikd.landmarks.stage import landmark_report_stage

        landmark_report_stage(params)
    elif args.command == "labels":
        from aikd.fiqa.stage import labels_stage

        for method in args.method:
            labels_stage(params, method)
    elif args.command == "distill":
        from aikd.distill.stage import distill_stage

        for run in args.run:
            distill_stage(params, run, resume=not args.restart)
    elif args.command in ("pairs", "quality", "evaluate", "report"):
        from aikd.evaluation import stage as ev

        if args.command == "pairs":
            for bench in args.benchmark:
                ev.pairs_stage(params, bench)
        elif args.command == "quality":
            from aikd.quality import quality_stage

            for det in args.detector:
                quality_stage(params, args.dataset, det)
        elif args.command == "evaluate":
            ev.evaluate_stage(params)
        else:
            ev.report_stage(params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
