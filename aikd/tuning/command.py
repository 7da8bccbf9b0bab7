"""``aikd tune``: the subcommand's help (what is searched, the objective, the cost) and
its body. ``aikd.cli`` adds ``--params``/``-S`` and dispatches here; nothing heavy is
imported until the sweep starts, so ``aikd tune --help`` stays fast."""

from __future__ import annotations

import argparse

HELP = "Ray Tune sweep over the jitter range p and lr (MLflow-tracked)"

DESCRIPTION = """\
Sweep AI-KD training settings with Ray Tune; every trial is an ordinary distill run
(train_distill) on a seeded subset of the labelled training images.

searched (params.yaml tune.space, as shipped):
  max_shift  uniform over [0, 0.17] IOD (= [0, 6] px at the 112-px ArcFace template,
             the paper's p = 3 px in the middle)
  lr         log-uniform over [1e-3, 0.2] (swa_lr tied to it: tune.tie_swa_lr)

objective (lower is better): mean validation pAUC at FMR tune.fmr over the faces
  aligned by each of tune.detectors, on validation identities only (never test
  images); ASHA (tune.asha) stops bad trials early at its rungs.

writes tune.out_dir/best.yaml (best config, its score, the `dvc exp run -S ...`
command that applies it), trials.csv and sweep.png; one MLflow parent run with a
child run per trial."""

EPILOG = """\
cost: ~7 min per trial on 2 cores at the default budget (tune.train_images 3500,
tune.trial.epochs 3); the default 8 trials, 2 at a time, take ~30 min (longer on a
busy machine); -S tune.num_samples=4 halves it. More: docs/tuning.md."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` (made by aikd.cli, with --params/-S) the ``aikd tune`` parser."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args: argparse.Namespace) -> int:
    """Body of ``aikd tune``: the sweep on ``args.params`` with the ``args.set`` overrides."""
    from aikd.config import load_params
    from aikd.tuning.stage import tune_stage

    summary = tune_stage(load_params(args.params, args.set))
    print(f"wrote {summary['paths']['best']}")
    return 0
