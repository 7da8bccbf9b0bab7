"""Entry script that tests/test_distributed.py starts under ``accelerate launch``.

    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml \
        tests/accelerate_entry.py <spec.json>

Every process first installs an audit hook that records each file it opens for writing,
renames to, or saves with ``torch.save`` (which writes from C++, unseen by the hook), and
each sqlite database it connects to, under ``spec["watch"]``, so the test can tell which
process wrote what; at exit the record goes to ``<watch>/writes/rank<R>.json``.
Then, per ``spec["mode"]``:

* ``cli``: the real ``python -m aikd.distill`` entry point with ``spec["argv"]``;
* ``train``: ``train_distill`` on the rows in ``spec["train"]``/``spec["val"]`` (parquet)
  for each of ``spec["jobs"]`` (``out``, ``config``, ``stop_after``, ``resume``), one
  after the other in the same process group.

Not collected by pytest (no ``test_`` prefix); it only imports aikd and the standard
library, so it can run with the worktree on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

spec = json.loads(Path(sys.argv[1]).read_text())
WATCH = Path(spec["watch"]).resolve()
RANK = int(os.environ.get("RANK", "0"))
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND
writes: set[str] = set()


def _record(event: str, args: tuple) -> None:
    """Audit hook: remember paths under WATCH opened for writing or used as sqlite db."""
    if event == "open":
        path, mode, flags = args
        writing = (any(c in mode for c in "wax+") if isinstance(mode, str)
                   else bool((flags or 0) & WRITE_FLAGS))
    elif event == "os.rename":  # also os.replace, Path.rename/replace
        path, writing = args[1], True
    elif event == "sqlite3.connect":
        path, writing = args[0], True
    else:
        return
    if not writing or not isinstance(path, str | bytes | os.PathLike):
        return
    p = os.path.abspath(os.fsdecode(path))
    if p.startswith(str(WATCH) + os.sep):
        writes.add(os.path.relpath(p, WATCH))


def _dump() -> None:
    out = WATCH / "writes"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{RANK}.json").write_text(json.dumps(sorted(writes)))


def _record_torch_save() -> None:
    import torch

    save = torch.save

    def recording_save(obj, f, *args, **kwargs):
        if isinstance(f, str | os.PathLike):
            _record("open", (f, "wb", 0))
        return save(obj, f, *args, **kwargs)

    torch.save = recording_save


def _train() -> None:
    import pandas as pd

    from aikd.distill.train import train_distill

    train, val = pd.read_parquet(spec["train"]), pd.read_parquet(spec["val"])
    for job in spec["jobs"]:
        train_distill(job["config"], train, val, job["out"], resume=job.get("resume", False),
                      stop_after=job.get("stop_after"))


sys.addaudithook(_record)
_record_torch_save()
try:
    if spec["mode"] == "cli":
        sys.argv = ["aikd.distill", *spec["argv"]]
        runpy.run_module("aikd.distill", run_name="__main__", alter_sys=True)
    else:
        _train()
finally:
    _dump()
