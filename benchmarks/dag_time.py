"""Wall time of a `dvc repro`, per stage and per stage group, from a timestamped log.

Run the DAG with every output line stamped (unbuffered, so a stamp is when the line was
written), e.g.::

    PYTHONUNBUFFERED=1 dvc repro 2>&1 | awk '{ print strftime("%H:%M:%S"), $0; fflush() }' \
        > dag.log; echo "rc=$? end=$(date +%H:%M:%S)" >> dag.log
    python benchmarks/dag_time.py dag.log --note "idle machine"

A stage runs from its ``Running stage '<name>':`` line to the next stage's line (or the
final ``end=`` line). Several logs (a run that was restarted) are read in order; the
stages a later log skipped keep the time of the log that ran them. Writes
``benchmarks/results/dag_time.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime, timedelta
from pathlib import Path

STAMP = r"(\d\d:\d\d:\d\d)"
RUNNING = re.compile(STAMP + r" Running stage '([^']+)':")
END = re.compile(r"rc=(\d+) end=(\d\d:\d\d:\d\d)")


def stage_times(lines: list[str]) -> tuple[list[tuple[str, float]], int | None]:
    """[(stage, minutes)] in run order and the run's exit status (None: no end line)."""
    events: list[tuple[str | None, datetime]] = []
    rc = None
    day = datetime(2000, 1, 1)
    last: datetime | None = None

    def at(stamp: str) -> datetime:
        nonlocal day, last
        t = datetime.combine(day.date(), datetime.strptime(stamp, "%H:%M:%S").time())
        if last is not None and t < last:  # past midnight
            day += timedelta(days=1)
            t += timedelta(days=1)
        last = t
        return t

    for line in lines:
        if m := RUNNING.match(line):
            events.append((m.group(2), at(m.group(1))))
        elif m := END.search(line):
            rc = int(m.group(1))
            events.append((None, at(m.group(2))))
        elif m := re.match(STAMP + " ", line):
            at(m.group(1))
    out = []
    for (name, start), (_, stop) in zip(events, events[1:], strict=False):
        if name is not None:
            out.append((name, (stop - start).total_seconds() / 60))
    return out, rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("logs", nargs="+", type=Path)
    ap.add_argument("--note", default="", help="what the machine was doing meanwhile")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/dag_time.json"))
    args = ap.parse_args()
    stages: dict[str, float] = {}
    codes = []
    for log in args.logs:
        times, rc = stage_times(log.read_text(errors="replace").splitlines())
        stages.update(times)
        codes.append(rc)
    groups: dict[str, float] = {}
    for name, minutes in stages.items():
        key = name.split("@")[0]
        groups[key] = groups.get(key, 0.0) + minutes
    total = sum(stages.values())
    result = {"total_minutes": round(total, 1), "exit_codes": codes, "note": args.note,
              "groups_minutes": {k: round(v, 2) for k, v in groups.items()},
              "stages_minutes": {k: round(v, 2) for k, v in stages.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| stage group | stages | minutes |\n|---|---|---|")
    for key, minutes in groups.items():
        n = sum(1 for s in stages if s.split("@")[0] == key)
        print(f"| {key} | {n} | {minutes:.1f} |")
    print(f"| **total** | {len(stages)} | **{total:.1f}** |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
