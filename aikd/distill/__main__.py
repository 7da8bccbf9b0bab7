"""``python -m aikd.distill <run>``: the distill stage of one run, for ``accelerate launch``.

    accelerate launch --multi_gpu --num_processes 2 -m aikd.distill sddfiqa-T [-S ...]

Every process trains its shard of each batch; the main one validates, writes the model
and publishes it to ``<distill.out_dir>/<run>/seed<seed>/`` as ``aikd distill`` and
``dvc repro`` do.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from aikd.config import add_params_options, load_params
from aikd.distill.stage import distill_stage
from aikd.errors import AikdError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aikd.distill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run name from params distill.runs, e.g. sddfiqa-T, or "
                        "sddfiqa-T@s1 for training seed 1 (bare: the first of train_seeds)")
    parser.add_argument("--restart", action="store_true", help="ignore checkpoints, start over")
    add_params_options(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file
    try:
        distill_stage(load_params(args.params, args.set), args.run, resume=not args.restart)
    except AikdError as exc:  # one line, as `aikd distill` prints it
        print(f"aikd: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
