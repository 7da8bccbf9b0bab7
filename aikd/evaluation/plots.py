"""EDC figures rendered off-screen, so they work on headless training and CI machines."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_edc"]


def plot_edc(
    curves: Mapping[str, pd.DataFrame],
    path: str | Path,
    title: str,
    fmr: float,
    paucs: Mapping[str, float] | None = None,
) -> Path:
    """Plot FNMR against discard rate, one line per label, and save it as a PNG.

    ``curves`` maps a label to an ``edc_curve`` DataFrame; ``paucs`` (optional) adds each
    label's pAUC to the legend so the figure carries the headline number. A Figure with an
    explicit Agg canvas is used instead of pyplot so no global backend or open figure state
    is touched. Returns the written path.
    """
    if not curves:
        raise ValueError("curves is empty: nothing to plot")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)

    fig = Figure(figsize=(6.0, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, curve in curves.items():
        missing = {"discard_rate", "fnmr"} - set(curve.columns)
        if missing:
            raise ValueError(f"curve {label!r} lacks columns {sorted(missing)}")
        legend = label
        if paucs is not None and label in paucs:
            legend = f"{label} (pAUC {paucs[label]:.3f})"
        ax.plot(curve["discard_rate"], curve["fnmr"], marker=".", markersize=3, label=legend)
    ax.set_xlabel("Ratio of unconsidered pairs (discard rate)")
    ax.set_ylabel(f"FNMR at FMR = {fmr:g}")
    ax.set_title(title)
    ax.set_ylim(bottom=0.0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out
