"""Names that travel between stages: run names and metric names.

A run is ``<label method>-<variant>`` (``sddfiqa-T``), one trained model of it is
``<run>@s<seed>`` (``sddfiqa-T@s1``: its quality column, stage argument and folder
``<distill.out_dir>/<run>/seed<seed>``); a validation pAUC metric is
``<prefix>_fmr<tag>[_<detector>]`` (``val_pauc_fmr1e-3_retinaface``). Training writes
these names, tuning, the registry and the reports read them back: one home, so that
writer and readers cannot drift apart.
"""

from __future__ import annotations

import math

#: FMRs at which training validation reports pAUC (``val_pauc_fmr1e-2``, ``..1e-3``); tuning
#: objectives and the registry's champion metric must be one of them.
VALIDATION_FMRS = (1e-2, 1e-3)

#: Variants of a trained quality model: B plain regression, C consistency only, T AI-KD.
TRAINED_VARIANTS = ("B", "C", "T")


def run_name(method: str, variant: str) -> str:
    """``(sddfiqa, T)`` -> ``sddfiqa-T``."""
    return f"{method}-{variant}"


def split_run_name(name: str, *, variants: tuple[str, ...] = TRAINED_VARIANTS) -> tuple[str, str]:
    """``sddfiqa-T`` -> (``sddfiqa``, ``T``). The variant is the part after the *last*
    hyphen, so a method name may itself contain hyphens (``my-fiqa-T``)."""
    method, sep, variant = name.rpartition("-")
    if not method or not sep or variant not in variants:
        raise ValueError(f"run name {name!r} is not <label method>-<variant> with variant in "
                         f"{', '.join(variants)} (e.g. serfiq-T, crfiqa-B)")
    return method, variant


#: Separates a run from its training seed in a trained model's name: ``sddfiqa-T@s1``.
SEED_MARK = "@s"


def seeded_name(run: str, seed: int) -> str:
    """``(sddfiqa-T, 1)`` -> ``sddfiqa-T@s1``: one trained model of a run."""
    return f"{run}{SEED_MARK}{int(seed)}"


def split_seeded_name(name: str) -> tuple[str, int | None]:
    """``sddfiqa-T@s1`` -> (``sddfiqa-T``, 1); a name without a seed -> (name, None), so
    quality tables written before seeds existed still read as one unseeded model."""
    run, sep, seed = name.rpartition(SEED_MARK)
    if not sep:
        return name, None
    if not run or not seed.isdigit():
        raise ValueError(f"model name {name!r} is not <run>{SEED_MARK}<seed> with a "
                         f"non-negative integer seed (e.g. sddfiqa-T{SEED_MARK}1)")
    return run, int(seed)


def seed_folder(seed: int) -> str:
    """``1`` -> ``seed1``: the folder of one seed's model under its run's folder."""
    return f"seed{int(seed)}"


def fmr_tag(fmr: float) -> str:
    """``0.001`` -> ``1e-3``: the short, exact spelling of an FMR used in metric names."""
    fmr = float(fmr)
    if not 0.0 < fmr < 1.0:
        raise ValueError(f"fmr must be in (0, 1), got {fmr}")
    mantissa, exponent = f"{fmr:.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    tag = f"{mantissa}e{int(exponent)}"
    if not math.isclose(float(tag), fmr, rel_tol=1e-9):
        raise ValueError(f"fmr {fmr!r} has no short exact tag")
    return tag


def pauc_metric(fmr: float, detector: str | None = None, *, prefix: str = "val_pauc") -> str:
    """``(0.001, "retinaface")`` -> ``val_pauc_fmr1e-3_retinaface``."""
    return f"{prefix}_fmr{fmr_tag(fmr)}" + (f"_{detector}" if detector else "")
