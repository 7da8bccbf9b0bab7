"""CR-FIQA certainty-ratio labels (Boutros et al., CVPR 2023), computed offline.

CR-FIQA learns quality from how confidently a sample sits in its own class: the cosine to
its class centre (CCS) relative to the cosine to the nearest other class centre (NNCCS).
During CR-FIQA training the centres are the classification weights; offline we take them
as the mean of L2-normalised embeddings per identity. The image's own centre leaves the
image out, otherwise a class of two images would score each image largely against itself.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from aikd.fiqa.sddfiqa import check_embeddings, group_identities, warn_singletons

__all__ = ["CRFIQAVariant", "crfiqa_components", "crfiqa_labels"]

CRFIQAVariant = Literal["paper", "ratio"]
_SIM_CHUNK_ENTRIES = 1 << 22


def crfiqa_components(
    embeddings: np.ndarray, identities: np.ndarray | list
) -> tuple[np.ndarray, np.ndarray]:
    """Per image (CCS, NNCCS); CCS is NaN for single-image identities.

    CCS = cosine to the mean of the *other* normalised embeddings of its identity.
    NNCCS = largest cosine to any other identity's full centre (singleton identities are
    still classes, so their centre counts as a possible nearest neighbour of others).
    """
    emb = check_embeddings(embeddings, identities)
    groups = group_identities(identities)
    if groups.n_groups < 2:
        raise ValueError("CR-FIQA needs at least two identities (a nearest other centre)")
    n_groups = groups.n_groups
    sums = np.zeros((n_groups, emb.shape[1]))
    np.add.at(sums, groups.codes, emb)

    own = sums[groups.codes] - emb  # leave-one-out sum; its direction is the centre's
    own_norm = np.linalg.norm(own, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ccs = np.einsum("nd,nd->n", emb, own) / own_norm
    ccs[groups.singleton_mask()] = np.nan

    centres = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    nnccs = np.empty(emb.shape[0])
    per = max(1, _SIM_CHUNK_ENTRIES // n_groups)
    for lo in range(0, emb.shape[0], per):
        sim = emb[lo : lo + per] @ centres.T
        sim[np.arange(sim.shape[0]), groups.codes[lo : lo + per]] = -np.inf
        nnccs[lo : lo + per] = sim.max(axis=1)
    return ccs, nnccs


def crfiqa_labels(
    embeddings: np.ndarray,
    identities: np.ndarray | list,
    *,
    variant: CRFIQAVariant = "paper",
    eps: float = 1e-9,
) -> np.ndarray:
    """CR-FIQA label per image (higher = better).

    ``variant="paper"``: CCS / (NNCCS + 1 + eps); the +1 shifts NNCCS from [-1, 1] to
    [0, 2] so the ratio stays bounded and keeps its sign meaning.
    ``variant="ratio"``: CCS / NNCCS as in the official code; unbounded and sign-flipping
    when NNCCS <= 0 (rare with real face embeddings, possible with toy ones).
    Singleton identities get NaN and a SingletonIdentityWarning.
    """
    if variant not in ("paper", "ratio"):
        raise ValueError(f"variant must be 'paper' or 'ratio', got {variant!r}")
    ccs, nnccs = crfiqa_components(embeddings, identities)
    warn_singletons("CR-FIQA", group_identities(identities))
    with np.errstate(divide="ignore", invalid="ignore"):
        if variant == "paper":
            return ccs / (nnccs + 1.0 + eps)
        return ccs / nnccs
