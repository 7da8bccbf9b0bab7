"""The DVC pipeline as one Mermaid node per stage family (``stage@item`` collapsed).

`dvc dag` draws every foreach/matrix item (44 nodes, lines thousands of characters wide);
this folds ``landmarks@lfw-mtcnn``, ``landmarks@ytf-dlib``, ... into ``landmarks``.

    python scripts/pipeline_graph.py                      # runs `dvc dag --mermaid`, prints
    dvc dag --mermaid | python scripts/pipeline_graph.py -
    python scripts/pipeline_graph.py --update docs/pipeline.md   # rewrite the marked block
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import yaml

START, END = "<!-- pipeline-graph:start -->", "<!-- pipeline-graph:end -->"
NODE = re.compile(r'^\s*(\w+)\["(.+)"\]\s*$')
EDGE = re.compile(r"^\s*(\w+)\s*-->\s*(\w+)\s*$")


def family(stage: str) -> str:
    """``landmarks@lfw-mtcnn`` -> ``landmarks``: the dvc.yaml stage an item belongs to."""
    return stage.partition("@")[0]


def collapse(mermaid: str) -> tuple[dict[str, int], set[tuple[str, str]]]:
    """Items per stage family and the edges between families, from `dvc dag --mermaid`."""
    names: dict[str, str] = {}
    edges: set[tuple[str, str]] = set()
    for line in mermaid.splitlines():
        if m := NODE.match(line):
            names[m.group(1)] = m.group(2)
        elif m := EDGE.match(line):
            a, b = family(names[m.group(1)]), family(names[m.group(2)])
            if a != b:
                edges.add((a, b))
    counts: dict[str, int] = {}
    for name in names.values():
        counts[family(name)] = counts.get(family(name), 0) + 1
    return counts, edges


def render(counts: dict[str, int], edges: set[tuple[str, str]], order: list[str]) -> str:
    """Mermaid flowchart, families in ``order`` (dvc.yaml's), then any others sorted."""
    families = [f for f in order if f in counts] + sorted(set(counts) - set(order))
    lines = ["flowchart TD"]
    for f in families:
        label = f if counts[f] == 1 else f"{f} ×{counts[f]}"
        lines.append(f'    {f}["{label}"]')
    rank = {f: i for i, f in enumerate(families)}
    lines += [f"    {a} --> {b}" for a, b in sorted(edges, key=lambda e: (rank[e[0]], rank[e[1]]))]
    return "\n".join(lines) + "\n"


def stage_order(dvc_yaml: Path) -> list[str]:
    """The stage families in the order dvc.yaml declares them."""
    if not dvc_yaml.is_file():
        return []
    return list((yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {})


def update(doc: Path, graph: str) -> None:
    """Replace the Mermaid block between the START/END markers of ``doc``."""
    text = doc.read_text()
    head, sep, rest = text.partition(START)
    _, sep2, tail = rest.partition(END)
    if not (sep and sep2):
        raise SystemExit(f"{doc}: markers {START} / {END} not found")
    doc.write_text(f"{head}{START}\n```mermaid\n{graph}```\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?",
                        help="`dvc dag --mermaid` output file, - for stdin (default: run dvc)")
    parser.add_argument("--dvc-yaml", default="dvc.yaml", help="for the order of the stages")
    parser.add_argument("--update", metavar="DOC", help="rewrite the marked block of DOC")
    args = parser.parse_args(argv)
    if args.source == "-":
        mermaid = sys.stdin.read()
    elif args.source:
        mermaid = Path(args.source).read_text()
    else:
        mermaid = subprocess.run(["dvc", "dag", "--mermaid"], check=True, capture_output=True,
                                 text=True).stdout
    graph = render(*collapse(mermaid), stage_order(Path(args.dvc_yaml)))
    if args.update:
        update(Path(args.update), graph)
    else:
        sys.stdout.write(graph)
    return 0


if __name__ == "__main__":
    sys.exit(main())
