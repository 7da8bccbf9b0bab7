"""CR-FIQA certainty-ratio labels (Boutros et al., CVPR 2023), computed offline.

CR-FIQA learns quality from how confidently a sample sits in its own class: the cosine to
its class centre (CCS) relative to the cosine to the nearest other class centre (NNCCS).
During CR-FIQA training the centres are the classification weights; offline we take them
as the mean of L2-normalised embeddings per identity. The image's own centre leaves the
image out, otherwise a class of two images would score each image largely against itself.

A mean of k unit vectors points at the true centre only up to noise that shrinks with k, so
the leave-one-out CCS grows with the number of the person's other images (Spearman 0.35
with it on the validation people here), a property of the data set, not of the image.
``centre="debiased"`` estimates the cosine to the true centre instead (see
:func:`crfiqa_components`), closer to what CR-FIQA's learned class weights give.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from aikd.fiqa.sddfiqa import check_embeddings, group_identities, warn_singletons

__all__ = ["CRFIQACentre", "CRFIQAVariant", "crfiqa_components", "crfiqa_labels"]

CRFIQAVariant = Literal["paper", "ratio"]
CRFIQACentre = Literal["loo", "debiased"]
_SIM_CHUNK_ENTRIES = 1 << 22


def crfiqa_components(
    embeddings: np.ndarray, identities: np.ndarray | list, *, centre: CRFIQACentre = "loo"
) -> tuple[np.ndarray, np.ndarray]:
    """Per image (CCS, NNCCS); CCS is NaN for single-image identities.

    ``centre="loo"``: CCS = cosine to the mean of the *other* normalised embeddings of its
    identity. ``centre="debiased"``: with unit embeddings e_j = a_j c + noise around a true
    centre direction c, the mean cosine to the k other images estimates a_i * a and the
    person's mean pairwise cosine r estimates a^2, so CCS = mean cosine / sqrt(r) estimates
    a_i = cos(e_i, c) without the leave-one-out mean's dependence on k (r over all n >= 2
    images of the person; NaN where r <= 0).
    NNCCS = largest cosine to any other identity's full centre (singleton identities are
    still classes, so their centre counts as a possible nearest neighbour of others).
    """
    if centre not in ("loo", "debiased"):
        raise ValueError(f"centre must be 'loo' or 'debiased', got {centre!r}")
    emb = check_embeddings(embeddings, identities)
    groups = group_identities(identities)
    if groups.n_groups < 2:
        raise ValueError("CR-FIQA needs at least two identities (a nearest other centre)")
    n_groups = groups.n_groups
    sums = np.zeros((n_groups, emb.shape[1]))
    np.add.at(sums, groups.codes, emb)

    own = sums[groups.codes] - emb  # leave-one-out sum; its direction is the centre's
    with np.errstate(invalid="ignore", divide="ignore"):
        dots = np.einsum("nd,nd->n", emb, own)
        if centre == "loo":
            ccs = dots / np.linalg.norm(own, axis=1)
        else:
            n = np.bincount(groups.codes, minlength=n_groups).astype(float)
            sq = np.einsum("gd,gd->g", sums, sums)
            norms2 = np.bincount(groups.codes, weights=np.einsum("nd,nd->n", emb, emb),
                                 minlength=n_groups)
            pair_mean = (sq - norms2) / (n * (n - 1))  # mean cosine over pairs i != j
            r = pair_mean[groups.codes]
            ccs = np.where(r > 0, dots / (n[groups.codes] - 1) / np.sqrt(np.abs(r)), np.nan)
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
    centre: CRFIQACentre = "loo",
    eps: float = 1e-9,
) -> np.ndarray:
    """CR-FIQA label per image (higher = better).

    ``variant="paper"``: CCS / (NNCCS + 1 + eps); the +1 shifts NNCCS from [-1, 1] to
    [0, 2] so the ratio stays bounded and keeps its sign meaning.
    ``variant="ratio"``: CCS / NNCCS as in the official code; unbounded and sign-flipping
    when NNCCS <= 0 (rare with real face embeddings, possible with toy ones).
    ``centre``: how CCS's class centre is estimated (:func:`crfiqa_components`).
    Singleton identities get NaN and a SingletonIdentityWarning.
    """
    if variant not in ("paper", "ratio"):
        raise ValueError(f"variant must be 'paper' or 'ratio', got {variant!r}")
    ccs, nnccs = crfiqa_components(embeddings, identities, centre=centre)
    warn_singletons("CR-FIQA", group_identities(identities))
    with np.errstate(divide="ignore", invalid="ignore"):
        if variant == "paper":
            return ccs / (nnccs + 1.0 + eps)
        return ccs / nnccs
