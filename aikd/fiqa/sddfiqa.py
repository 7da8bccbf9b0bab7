"""SDD-FIQA pseudo-quality labels (Ou et al., CVPR 2021), computed offline from embeddings.

A face image is of high quality when its similarities to other images of the same person
(mated) sit far above its similarities to other people (non-mated). SDD-FIQA measures that
separation as the Wasserstein distance between the two similarity distributions, each
estimated from ``m`` randomly drawn comparisons and averaged over ``k`` draws so the label
does not depend on which few comparisons happened to be picked.

This module also holds the identity bookkeeping shared with :mod:`aikd.fiqa.crfiqa`:
an image whose identity has no other image cannot have a mated comparison, so it gets NaN
and a :class:`SingletonIdentityWarning` says how many, instead of being silently dropped.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["IdentityGroups", "SingletonIdentityWarning", "group_identities", "sddfiqa_labels"]

# Rows with at most this many candidates (in units of m) are sampled by sorting random keys;
# larger pools use rejection sampling, where a repeated index is unlikely.
_DENSE_FACTOR = 16
_ROW_CHUNK = 4096
# Up to this many images, cosines come from chunked full similarity rows (O(N^2 d) BLAS);
# beyond it, from gathered embeddings (O(N k m d)), which wins for very large N.
_FULL_ROW_MAX_N = 40_000
_SIM_CHUNK_ENTRIES = 1 << 22


class SingletonIdentityWarning(UserWarning):
    """Some images got NaN because their identity has a single image (no mated comparison).

    ``n_images`` and ``n_identities`` let a caller report the loss without re-counting.
    """

    def __init__(self, method: str, n_images: int, n_identities: int) -> None:
        self.method = method
        self.n_images = n_images
        self.n_identities = n_identities
        super().__init__(
            f"{method}: {n_images} image(s) of {n_identities} single-image identit"
            f"{'y' if n_identities == 1 else 'ies'} have no mated comparison; their label is NaN"
        )


@dataclass(frozen=True)
class IdentityGroups:
    """Images grouped by identity: ``order`` lists image indices identity by identity.

    Group ``g`` occupies ``order[starts[g] : starts[g] + sizes[g]]``; ``codes[i]`` is the
    group of image ``i`` and ``rank[i]`` its position inside that group.
    """

    codes: np.ndarray
    order: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray
    rank: np.ndarray

    @property
    def n_groups(self) -> int:
        return int(self.sizes.shape[0])

    def singleton_mask(self) -> np.ndarray:
        """Per image: True if its identity has no other image."""
        return self.sizes[self.codes] == 1


def group_identities(identities: np.ndarray | list) -> IdentityGroups:
    """Group images by identity label (any hashable-to-numpy labels: str, int)."""
    ids = np.asarray(identities)
    if ids.ndim != 1:
        raise ValueError(f"identities must be 1-D, got shape {ids.shape}")
    if ids.dtype.kind == "f" and np.isnan(ids).any():
        raise ValueError("identities contain NaN")
    _, codes, sizes = np.unique(ids, return_inverse=True, return_counts=True)
    codes = codes.reshape(-1).astype(np.int64)
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
    rank = np.empty_like(codes)
    rank[order] = np.arange(codes.shape[0]) - starts[codes[order]]
    return IdentityGroups(codes, order, starts, sizes.astype(np.int64), rank)


def warn_singletons(method: str, groups: IdentityGroups) -> None:
    """Emit a SingletonIdentityWarning if any identity has a single image."""
    n_ids = int((groups.sizes == 1).sum())
    if n_ids:
        # Each single-image identity contributes exactly one unlabelled image.
        warnings.warn(SingletonIdentityWarning(method, n_ids, n_ids), stacklevel=3)


def check_embeddings(embeddings: np.ndarray, identities: np.ndarray | list) -> np.ndarray:
    """Validate (N, d) finite embeddings matching N identities; return them L2-normalised."""
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
        raise ValueError(f"embeddings must be a non-empty (N, d) array, got shape {emb.shape}")
    if len(identities) != emb.shape[0]:
        raise ValueError(f"{emb.shape[0]} embeddings but {len(identities)} identities")
    if not np.isfinite(emb).all():
        raise ValueError("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{int((norms == 0).sum())} embedding(s) are all zeros")
    return emb / norms


def _sample_indices(rng: np.random.Generator, n_avail: np.ndarray, m: int) -> np.ndarray:
    """Per row r, m indices in [0, n_avail[r]): distinct if n_avail[r] >= m, else with
    replacement (the only way to get m values from a small pool)."""
    rows = n_avail.shape[0]
    out = np.empty((rows, m), dtype=np.int64)
    small = np.flatnonzero(n_avail < m)
    if small.size:
        u = rng.random((small.size, m))
        out[small] = np.minimum(
            (u * n_avail[small, None]).astype(np.int64), n_avail[small, None] - 1
        )
    dense = np.flatnonzero((n_avail >= m) & (n_avail <= _DENSE_FACTOR * m))
    for lo in range(0, dense.size, _ROW_CHUNK):
        sel = dense[lo : lo + _ROW_CHUNK]
        width = int(n_avail[sel].max())
        keys = rng.random((sel.size, width))
        keys[np.arange(width)[None, :] >= n_avail[sel, None]] = np.inf
        out[sel] = np.argpartition(keys, m - 1, axis=1)[:, :m] if m < width else keys.argsort(1)
    todo = np.flatnonzero(n_avail > _DENSE_FACTOR * m)
    while todo.size:
        u = rng.random((todo.size, m))
        draw = (u * n_avail[todo, None]).astype(np.int64)
        out[todo] = draw
        s = np.sort(draw, axis=1)
        todo = todo[(s[:, 1:] == s[:, :-1]).any(axis=1)]  # redraw rows with a repeat
    return out


def _wasserstein_equal_size(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise 1-D Wasserstein-1 distance between two equal-size, equally weighted samples.

    For n points each, the optimal transport pairs the i-th smallest of one sample with the
    i-th smallest of the other, so W1 = mean |sort(a) - sort(b)|; this is exactly what
    ``scipy.stats.wasserstein_distance`` returns, without a Python loop per row.
    """
    return np.abs(np.sort(a, axis=-1) - np.sort(b, axis=-1)).mean(axis=-1)


def sddfiqa_labels(
    embeddings: np.ndarray,
    identities: np.ndarray | list,
    *,
    m: int = 24,
    k: int = 12,
    seed: int = 0,
) -> np.ndarray:
    """SDD-FIQA label per image: Wasserstein distance between mated and non-mated cosines.

    For each image and each of ``k`` rounds, draw ``m`` mated similarities (other images of
    its identity; with replacement when fewer than ``m`` exist, without otherwise) and ``m``
    non-mated similarities (images of other identities, without replacement when possible),
    then average the ``k`` Wasserstein distances. Higher = better quality.

    Images of single-image identities get NaN and trigger a SingletonIdentityWarning, so a
    caller can report how many were left without a label. Raises ValueError when fewer
    than two identities exist (no non-mated comparison is possible).
    """
    if m < 1 or k < 1:
        raise ValueError(f"m and k must be >= 1, got m={m}, k={k}")
    emb = check_embeddings(embeddings, identities)
    groups = group_identities(identities)
    if groups.n_groups < 2:
        raise ValueError("SDD-FIQA needs at least two identities (non-mated comparisons)")
    n = emb.shape[0]
    rng = np.random.default_rng(seed)

    # One row per (image, round); image-major so rows of one image are adjacent.
    img = np.repeat(np.arange(n), k)
    code = groups.codes[img]
    size, start, rank = groups.sizes[code], groups.starts[code], groups.rank[img]
    labelled = size > 1

    mated_pos = _sample_indices(rng, np.maximum(size - 1, 1), m)
    mated_pos += mated_pos >= rank[:, None]  # skip the image itself inside its group
    mated_pos[~labelled] = 0  # singletons: placeholder (the image itself), label set to NaN
    mated_idx = groups.order[start[:, None] + mated_pos]

    non_pos = _sample_indices(rng, n - size, m)
    non_pos += np.where(non_pos >= start[:, None], size[:, None], 0)  # skip its own group
    non_idx = groups.order[non_pos]

    dist = np.empty(img.shape[0])
    if n <= _FULL_ROW_MAX_N:
        # Moderate N: one BLAS product per chunk of images gives all their cosines at once,
        # far cheaper than gathering 2*m*k embedding rows per image.
        per = max(1, _SIM_CHUNK_ENTRIES // n)
        for lo in range(0, n, per):
            sim = emb[lo : lo + per] @ emb.T
            rows = slice(lo * k, min(lo + per, n) * k)
            local = img[rows] - lo
            mated_sim = sim[local[:, None], mated_idx[rows]]
            non_sim = sim[local[:, None], non_idx[rows]]
            dist[rows] = _wasserstein_equal_size(mated_sim, non_sim)
    else:
        # Large N: cost linear in N by gathering only the sampled embeddings.
        for lo in range(0, img.shape[0], _ROW_CHUNK):
            rows = slice(lo, lo + _ROW_CHUNK)
            e = emb[img[rows]]
            mated_sim = np.einsum("rjd,rd->rj", emb[mated_idx[rows]], e)
            non_sim = np.einsum("rjd,rd->rj", emb[non_idx[rows]], e)
            dist[rows] = _wasserstein_equal_size(mated_sim, non_sim)
    dist[~labelled] = np.nan
    warn_singletons("SDD-FIQA", groups)
    return dist.reshape(n, k).mean(axis=1)
