"""Checkpoints of a training run: what survives a kill, and when a resume is allowed.

``accelerator.save_state`` writes the student, optimizer, schedulers, the SWA average and
:class:`TrainState` into ``checkpoints/step_N``; a resumed run loads the newest complete
one and then reproduces the uninterrupted run step for step.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from accelerate import Accelerator

log = logging.getLogger(__name__)

#: Settings that may change between an interrupted run and its resume (they do not
#: change what is computed); any other difference makes the resume refuse.
RESUMABLE_CHANGES = {
    "num_workers", "progress", "log_every", "checkpoint_every", "keep_checkpoints", "trace",
    "check_images", "val_every", "val_subset", "val_max_shift", "torch_threads",
}


class TrainState:
    """Counters and history that must survive a resume (registered for checkpointing)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.config = dict(config)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "history": list(self.history), "config": dict(self.config)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.history = list(state["history"])
        self.config = dict(state["config"])


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints (those with a ``done`` marker), oldest first."""
    return sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir() and (p / "done").is_file())


def save_checkpoint(accelerator: Accelerator, ckpt_dir: Path, step: int, keep: int) -> None:
    """save_state into step_N.tmp, then rename: an interrupted save never looks complete."""
    final = ckpt_dir / f"step_{step:07d}"
    tmp = ckpt_dir / f"step_{step:07d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "done").write_text(str(step))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in list_checkpoints(ckpt_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def check_resumable(saved: Mapping[str, Any], current: Mapping[str, Any], where: Path) -> None:
    """Refuse (ValueError) a resume whose config changed beyond RESUMABLE_CHANGES."""
    diff = sorted(k for k in set(saved) | set(current)
                  if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k))
    if diff:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff)
        raise ValueError(f"cannot resume from {where}: the config changed ({detail})")


def resume_latest(accelerator: Accelerator, state: TrainState, config: Mapping[str, Any],
                  ckpt_dir: Path) -> None:
    """Load the newest complete checkpoint into the prepared objects, if there is one."""
    if list_checkpoints(ckpt_dir):
        last = list_checkpoints(ckpt_dir)[-1]
        accelerator.load_state(str(last))
        check_resumable(state.config, config, last)
        state.config = dict(config)
        log.info("resumed from %s at step %d", last, state.step)
    else:
        log.info("resume=True but no checkpoint in %s: starting fresh", ckpt_dir)
