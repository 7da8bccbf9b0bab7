"""Wall time of a `dvc repro` (or `dvc exp run`), per stage and per stage group.

Measure a run (the stage a process is running is sampled every 2 s; DVC's own log is not
timed, since a stage's output reaches a pipe in blocks)::

    python benchmarks/dag_time.py run --note "idle machine" [-- -f]   # args after -- go
                                                                       # to `dvc repro`
    python benchmarks/dag_time.py run --exp-run --out benchmarks/results/dag_time_seeds.json \
        -- -S 'train_seeds=[0,1,2]'                                    # `dvc exp run` instead

or summarise samples taken beside a run (``HH:MM:SS pipelines/<script>.py <args>`` lines,
e.g. from ``ps`` in a loop), several files in order::

    python benchmarks/dag_time.py samples part1.log part2.log --note "..."

A stage runs from its first to its last sample (± the sampling period); its name comes from
the command in ``dvc.lock``. Writes ``benchmarks/results/dag_time.json`` and prints a
Markdown table per stage group.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import yaml

PERIOD_S = 2.0


def stage_names(lock: Path = Path("dvc.lock")) -> dict[str, str]:
    """``pipelines/x.py a b`` -> ``x@a-b``: each stage's command as dvc.lock records it."""
    if not lock.is_file():
        return {}
    stages = yaml.safe_load(lock.read_text()).get("stages", {})
    return {" ".join(str(s["cmd"]).split()[1:]): name for name, s in stages.items()}


def running_stages(root_pid: int) -> list[str]:
    """The ``pipelines/*.py`` commands running now under ``root_pid`` (the ``dvc repro``),
    arguments included; other processes (another checkout's DVC run) are not counted."""
    import psutil

    found = []
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for child in children:
        try:
            parts = child.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if len(parts) >= 2 and parts[0].endswith("python") and parts[1].startswith(
                "pipelines/"):
            found.append(" ".join(parts[1:]))
    return sorted(set(found))


def spans(samples: list[tuple[datetime, str]]) -> dict[str, float]:
    """{command: minutes from its first to its last sample}, in order of first sight."""
    first: dict[str, datetime] = {}
    last: dict[str, datetime] = {}
    for t, cmd in samples:
        first.setdefault(cmd, t)
        last[cmd] = t
    return {cmd: ((last[cmd] - first[cmd]).total_seconds() + PERIOD_S) / 60 for cmd in first}


def read_samples(path: Path) -> list[tuple[datetime, str]]:
    out, day, prev = [], datetime(2000, 1, 1), None
    for line in path.read_text().splitlines():
        stamp, _, cmd = line.strip().partition(" ")
        if not cmd.startswith("pipelines/"):
            continue
        t = datetime.combine(day.date(), datetime.strptime(stamp, "%H:%M:%S").time())
        if prev is not None and t < prev:  # past midnight
            day += timedelta(days=1)
            t += timedelta(days=1)
        prev = t
        out.append((t, " ".join(cmd.split())))
    return out


def summarise(minutes_by_cmd: dict[str, float], note: str, out: Path,
              extra: dict | None = None) -> None:
    names = stage_names()
    stages = {names.get(cmd, cmd): m for cmd, m in minutes_by_cmd.items()}
    groups: dict[str, float] = {}
    counts: dict[str, int] = {}
    for name, minutes in stages.items():
        key = name.split("@")[0].removeprefix("pipelines/").removesuffix(".py").split()[0]
        groups[key] = groups.get(key, 0.0) + minutes
        counts[key] = counts.get(key, 0) + 1
    total = sum(stages.values())
    result = {"total_minutes": round(total, 1), "note": note, **(extra or {}),
              "sampling_period_s": PERIOD_S,
              "groups_minutes": {k: round(v, 2) for k, v in groups.items()},
              "stages_minutes": {k: round(v, 2) for k, v in stages.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("| stage group | stages | minutes |\n|---|---|---|")
    for key, minutes in groups.items():
        print(f"| {key} | {counts[key]} | {minutes:.1f} |")
    print(f"| **total** | {len(stages)} | **{total:.1f}** |")
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["run", "samples"])
    ap.add_argument("files", nargs="*", type=Path, help="samples mode: the sample logs")
    ap.add_argument("--note", default="", help="what else the machine was doing")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/dag_time.json"))
    ap.add_argument("--exp-run", action="store_true",
                    help="time `dvc exp run` (e.g. a params change such as more seeds)")
    args, rest = ap.parse_known_args()
    if args.mode == "samples":
        samples = [s for f in args.files for s in read_samples(f)]
        summarise(spans(samples), args.note, args.out)
        return
    dvc = ["dvc", "exp", "run"] if args.exp_run else ["dvc", "repro"]
    command = [*dvc, *[a for a in rest if a != "--"]]
    start = time.monotonic()
    proc = subprocess.Popen(command)
    samples: list[tuple[datetime, str]] = []
    while proc.poll() is None:
        now = datetime.now()
        samples += [(now, cmd) for cmd in running_stages(proc.pid)]
        time.sleep(PERIOD_S)
    wall = (time.monotonic() - start) / 60
    summarise(spans(samples), args.note, args.out,
              {"command": " ".join(command), "exit_code": proc.returncode,
               "wall_minutes": round(wall, 1)})
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
