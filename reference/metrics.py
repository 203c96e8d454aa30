"""Evaluation metrics: exact recall@k and the mean full-softmax loss.

Both work on already encoded embeddings F = f(X) (queries) and G = g(Y)
(all targets), blockwise over queries so that memory stays at
``block_size x N`` scores however many test queries there are.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from reference._validation import as_float_array, as_index_array, check_int, check_positive
from reference.softmax import log_partition

__all__ = ["ranks", "recall_at_k", "mean_softmax_loss", "evaluate"]

#: Default number of scores per block (block_size = max(1, _BLOCK_ENTRIES // N) queries).
_BLOCK_ENTRIES = 1 << 22


def _check_embeddings(F: Any, G: Any, pos: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    F = as_float_array(F, "F", ndim=2)
    G = as_float_array(G, "G", shape=(None, F.shape[1]))
    dtype = np.result_type(F.dtype, G.dtype)
    F, G = F.astype(dtype, copy=False), G.astype(dtype, copy=False)
    p = as_index_array(pos, "pos", upper=G.shape[0])
    if p.shape[0] != F.shape[0]:
        raise ValueError(f"pos: expected one id per query ({F.shape[0]}), got {p.shape[0]}")
    return F, G, p


def _blocks(n_queries: int, n_targets: int, block_size: int | None) -> tuple[range, int]:
    """Query blocks of ``block_size`` rows (default: about 4M scores per block)."""
    if block_size is None:
        block_size = max(1, _BLOCK_ENTRIES // n_targets)
    block_size = check_int(block_size, "block_size", low=1)
    return range(0, n_queries, block_size), block_size


def ranks(F: Any, G: Any, pos: Any, *, block_size: int | None = None) -> np.ndarray:
    """0-based rank of each query's positive among all targets, ties by smaller id.

    rank_i = #{y : s_iy > s_i,pos_i} + #{y < pos_i : s_iy = s_i,pos_i},  s = F G^T.

    A positive temperature beta does not change the order, so it is not needed.

    Parameters
    ----------
    F : array_like, shape (B, d)
        Query embeddings f(x).
    G : array_like, shape (N, d)
        Embeddings g(y) of all targets.
    pos : array_like of int, shape (B,)
        The positive target of each query.
    block_size : int, optional
        Queries per block (default: about 4M scores per block).

    Returns
    -------
    numpy.ndarray of int64, shape (B,)
    """
    F, G, p = _check_embeddings(F, G, pos)
    blocks, bs = _blocks(F.shape[0], G.shape[0], block_size)
    ids = np.arange(G.shape[0])
    out = np.empty(F.shape[0], dtype=np.int64)
    for start in blocks:
        s = F[start : start + bs] @ G.T  # (b, N)
        pb = p[start : start + bs]
        s_pos = s[np.arange(s.shape[0]), pb][:, None]  # taken from the same matrix: exact ties
        ahead = (s > s_pos) | ((s == s_pos) & (ids[None, :] < pb[:, None]))
        out[start : start + bs] = ahead.sum(axis=1)
    return out


def recall_at_k(
    F: Any, G: Any, pos: Any, ks: Iterable[int] = (1, 10, 100), *, block_size: int | None = None
) -> dict[int, float]:
    """Exact recall@k: the fraction of queries whose positive is among the top k targets.

    Top k by score <f(x), g(y)> over all N targets with ties broken by smaller
    id (the rule of P8, proofs/README.md section 6.8), i.e. recall@k = mean_i [rank_i < k] with
    :func:`ranks`. For k >= N it is 1.

    Parameters
    ----------
    F : array_like, shape (B, d)
    G : array_like, shape (N, d)
    pos : array_like of int, shape (B,)
    ks : iterable of int, default (1, 10, 100)
        Cut-offs, each >= 1.
    block_size : int, optional
        Queries per block.

    Returns
    -------
    dict[int, float]
        k -> recall@k, in the order of ``ks``.
    """
    ks_ = [check_int(k, "ks[]", low=1) for k in ks]
    if not ks_:
        raise ValueError("ks: expected at least one cut-off k >= 1, got none")
    r = ranks(F, G, pos, block_size=block_size)
    return {k: float(np.mean(r < k)) for k in ks_}


def mean_softmax_loss(
    F: Any, G: Any, pos: Any, *, beta: float, block_size: int | None = None
) -> float:
    """Mean full-softmax cross-entropy mean_i [log Z(x_i) - a_i,pos_i], a = beta F G^T.

    The same quantity as :meth:`reference.encoder.DualEncoder.full_softmax_loss`
    (without the gradient), computed blockwise over queries in log space.

    Parameters
    ----------
    F : array_like, shape (B, d)
    G : array_like, shape (N, d)
    pos : array_like of int, shape (B,)
    beta : float
        Temperature, > 0.
    block_size : int, optional
        Queries per block.

    Returns
    -------
    float
    """
    F, G, p = _check_embeddings(F, G, pos)
    beta = check_positive(beta, "beta")
    blocks, bs = _blocks(F.shape[0], G.shape[0], block_size)
    total = 0.0
    for start in blocks:
        a = beta * (F[start : start + bs] @ G.T)
        pb = p[start : start + bs]
        total += float(np.sum(log_partition(a, axis=1).astype(np.float64) - a[np.arange(a.shape[0]), pb]))
    return total / F.shape[0]


def evaluate(
    model: Any, X: Any, pos: Any, Y_all: Any, ks: Iterable[int] = (1, 10, 100)
) -> dict[str, float]:
    """Test metrics of a dual encoder: recall@k for each k and the mean full-softmax loss.

    Encodes all targets once with ``count=False`` (evaluation is not charged to
    the model's ``target_rows_encoded``).

    Parameters
    ----------
    model : reference.encoder.DualEncoder
    X : array_like, shape (B, query_dim)
    pos : array_like of int, shape (B,)
    Y_all : array_like, shape (N, target_dim)
    ks : iterable of int

    Returns
    -------
    dict
        ``"recall@<k>"`` for each k and ``"loss"``.
    """
    G = model.encode_targets(Y_all, count=False)
    F = model.encode_queries(X)
    out = {f"recall@{k}": v for k, v in recall_at_k(F, G, pos, ks).items()}
    out["loss"] = mean_softmax_loss(F, G, pos, beta=model.beta)
    return out
