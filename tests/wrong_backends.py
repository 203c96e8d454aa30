"""Backends for testing the conformance kit: one correct independent port, many wrong ones.

``CORRECT_NUMPY`` is a NumPy implementation of four protocols written without
the reference's code (its own sampler, kernels and solves), so it shows that a
correct *independent* implementation passes. Every ``WRONG_*`` backend has one
deliberate, realistic bug (named in its docstring and in ``BUGS``), together
with the scenario that must catch it and a phrase the report must contain;
``tests/test_conformance.py`` runs them all.

Usable from the shell too, e.g.
``python -m reference conformance tests.wrong_backends:WRONG_TOPK_TIE_RULE``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
from scipy.special import logsumexp

# ----------------------------------------------------------------------------
# A correct independent implementation
# ----------------------------------------------------------------------------


def _softmax_rows(a: np.ndarray) -> np.ndarray:
    w = np.exp(a - a.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True)


def numpy_sample(points: np.ndarray, queries: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Exact: inverse CDF with ``searchsorted`` on each row (a loop over queries: test code)."""
    rng = np.random.default_rng(seed)
    P = _softmax_rows(queries @ points.T)
    cdf = np.cumsum(P, axis=1)
    u = rng.random((queries.shape[0], n)) * cdf[:, -1:]
    ids = np.stack([np.searchsorted(c, uu, side="right") for c, uu in zip(cdf, u)])
    return np.minimum(ids, points.shape[0] - 1)


def numpy_bracket(points: np.ndarray, queries: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact log Z widened by tol / 4 on each side: a valid (if index-free) bracket."""
    log_z = logsumexp(queries @ points.T, axis=1)
    return log_z - tol / 4, log_z + tol / 4


def numpy_topk(points: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Stable sort of -logits: equal logits keep increasing id order."""
    return np.argsort(-(queries @ points.T), axis=1, kind="stable")[:, :k]


def _kernel(spec: dict[str, Any], A: np.ndarray, B: np.ndarray, *, forget_const: bool = False) -> np.ndarray:
    if spec["name"] == "linear":
        return A @ B.T + (0.0 if forget_const else spec["const"] ** 2)
    if spec["name"] == "rbf":
        d2 = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2 * A @ B.T
        return np.exp(-spec["gamma"] * np.maximum(d2, 0.0))
    return (A @ B.T + spec["c"]) ** spec["degree"]


def numpy_nystrom(G0: np.ndarray, landmarks: np.ndarray, G_L: np.ndarray, kernel: dict[str, Any]) -> np.ndarray:
    """Ghat = k(y)^T K_LL^{-1} G_L by a linear solve (no square root at all)."""
    A = G0[landmarks]
    return _kernel(kernel, G0, A) @ np.linalg.solve(_kernel(kernel, A, A), G_L)


CORRECT_NUMPY = SimpleNamespace(sample=numpy_sample, bracket=numpy_bracket, topk=numpy_topk, nystrom=numpy_nystrom)


# ----------------------------------------------------------------------------
# Wrong samplers
# ----------------------------------------------------------------------------


def _sample_from(P: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(P.shape[1], n, p=p / p.sum()) for p in P])


def sample_ignores_temperature(points, queries, n, seed):
    """Bug: normalises every query to unit norm, i.e. drops the temperature folded into q."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return _sample_from(_softmax_rows(q @ points.T), n, seed)


def sample_truncated(points, queries, n, seed):
    """Bug: the common shortcut of sampling only among the 16 largest logits."""
    a = queries @ points.T
    cut = np.sort(a, axis=1)[:, -min(16, a.shape[1])][:, None]
    return _sample_from(_softmax_rows(np.where(a >= cut, a, -np.inf)), n, seed)


def sample_deduplicates(points, queries, n, seed):
    """Bug: collapses duplicate points onto their first occurrence (one id gets all their mass)."""
    _, first, inverse = np.unique(points, axis=0, return_index=True, return_inverse=True)
    ids = numpy_sample(points, queries, n, seed)
    return first[inverse.reshape(-1)][ids]


def sample_naive_exp(points, queries, n, seed):
    """Bug: exp(a) / sum exp(a) without subtracting the maximum (overflows at logits ~ 1e4)."""
    with np.errstate(over="ignore", invalid="ignore"):
        w = np.exp(queries @ points.T)
        P = w / w.sum(axis=1, keepdims=True)
    return _sample_from(P, n, seed)


def sample_first_query_only(points, queries, n, seed):
    """Bug: a batching error: every query is sampled from the first query's softmax."""
    P = _softmax_rows(queries[:1] @ points.T)
    return _sample_from(np.repeat(P, queries.shape[0], axis=0), n, seed)


def sample_transposed_output(points, queries, n, seed):
    """Bug: returns (n, B) instead of (B, n)."""
    return numpy_sample(points, queries, n, seed).T.copy()


# ----------------------------------------------------------------------------
# Wrong encoders (the reference oracle with one thing changed)
# ----------------------------------------------------------------------------


def _oracle(params, config, X, pos, Y, neg, log_q, dtype=None):
    from reference.encoder import DualEncoder, EncoderConfig

    cfg = dict(config)
    if dtype is not None:
        cfg["dtype"] = dtype
    enc = DualEncoder(EncoderConfig(**cfg))
    enc.set_params(params)
    if neg is None:
        return enc.full_softmax_loss(X, pos, Y)
    return enc.sampled_softmax_loss(X, pos, Y, neg, log_q)


def encoder_transposed_weight(params, config, X, pos, Y, neg=None, log_q=None):
    """Bug: square weight matrices used transposed (our (in, out) W loaded into an (out, in) slot)."""
    swap = {k: v.ndim == 2 and v.shape[0] == v.shape[1] for k, v in params.items()}
    loss, grads = _oracle({k: v.T if swap[k] else v for k, v in params.items()}, config, X, pos, Y, neg, log_q)
    return loss, {k: g.T if swap[k] else g for k, g in grads.items()}


def encoder_ignores_log_q(params, config, X, pos, Y, neg=None, log_q=None):
    """Bug: the sampled softmax without the logQ correction even when log Q is given."""
    return _oracle(params, config, X, pos, Y, neg, None)


def encoder_float32_always(params, config, X, pos, Y, neg=None, log_q=None):
    """Bug: computes in float32 whatever the configured dtype (1e-7 errors in float64 scenarios)."""
    f32 = {k: v.astype(np.float32) for k, v in params.items()}
    lq = None if log_q is None else log_q.astype(np.float32)
    return _oracle(f32, config, X.astype(np.float32), pos, Y.astype(np.float32), neg, lq, dtype="float32")


def encoder_full_only(params, config, X, pos, Y, neg=None, log_q=None):
    """Not a bug: a backend without the sampled loss declines those scenarios."""
    if neg is not None:
        raise NotImplementedError("only the full softmax")
    return _oracle(params, config, X, pos, Y, None, None)


# ----------------------------------------------------------------------------
# Wrong top-k and brackets and Nystrom
# ----------------------------------------------------------------------------


def topk_wrong_tie_rule(points, queries, k):
    """Bug: exact ties broken by the *larger* id."""
    a = queries @ points.T
    ids = np.broadcast_to(np.arange(a.shape[1]), a.shape)
    return np.lexsort((-ids, -a), axis=-1)[:, :k]


def topk_unsorted(points, queries, k):
    """Bug: the right set (argpartition) returned in increasing id order, not by logit."""
    return np.sort(numpy_topk(points, queries, k), axis=1)


def _cluster_bracket(points, queries, *, with_eps: bool):
    """Groups of 8 points along the first coordinate; lo/hi = logsumexp(log n_v + <q,r_v> -/+ eps_v)."""
    N = points.shape[0]
    labels = np.empty(N, np.int64)
    labels[np.argsort(points[:, 0], kind="stable")] = np.arange(N) // 8
    counts = np.bincount(labels)
    reps = np.zeros((counts.size, points.shape[1]))
    np.add.at(reps, labels, points)
    reps /= counts[:, None]
    rho = np.zeros(counts.size)
    np.maximum.at(rho, labels, np.linalg.norm(points - reps[labels], axis=1))
    s = queries @ reps.T + np.log(counts)
    eps = np.linalg.norm(queries, axis=1)[:, None] * rho if with_eps else 0.0
    return logsumexp(s - eps, axis=1), logsumexp(s + eps, axis=1)


def bracket_forgets_eps(points, queries, tol):
    """Bug: lo = hi = logsumexp_v(log n_v + <q, r_v>): the radii term eps_v = ||q|| rho_v is dropped."""
    return _cluster_bracket(points, queries, with_eps=False)


def bracket_ignores_tol(points, queries, tol):
    """Bug: a sound bracket (with eps) from a fixed cut that is never refined to reach tol."""
    return _cluster_bracket(points, queries, with_eps=True)


def bracket_shrunk_radii(points, queries, tol):
    """Bug: radii 1% too small (e.g. rounded down, or the farthest point missed), in an
    index whose representatives are data points (groups of 40 consecutive ids, the
    first one representing the group); falls back to the exact log Z when wider than tol."""
    N = points.shape[0]
    labels = np.arange(N) // 40
    reps = points[::40]
    rho = np.zeros(reps.shape[0])
    np.maximum.at(rho, labels, np.linalg.norm(points - reps[labels], axis=1))
    s = queries @ reps.T + np.log(np.bincount(labels))
    eps = np.linalg.norm(queries, axis=1)[:, None] * (0.99 * rho)
    lo, hi = logsumexp(s - eps, axis=1), logsumexp(s + eps, axis=1)
    exact = logsumexp(queries @ points.T, axis=1)
    wide = hi - lo > tol
    return np.where(wide, exact, lo), np.where(wide, exact, hi)


def nystrom_forgets_const(G0, landmarks, G_L, kernel):
    """Bug: the linear kernel without its constant feature c^2 (so offsets b are not carried, P11)."""
    A = G0[landmarks]
    K_LL = _kernel(kernel, A, A, forget_const=True)
    return _kernel(kernel, G0, A, forget_const=True) @ np.linalg.pinv(K_LL) @ G_L


def _one(attr: str, fn) -> SimpleNamespace:
    return SimpleNamespace(**{attr: fn})


WRONG_SAMPLER_TEMPERATURE = _one("sample", sample_ignores_temperature)
WRONG_SAMPLER_TRUNCATED = _one("sample", sample_truncated)
WRONG_SAMPLER_DEDUPLICATES = _one("sample", sample_deduplicates)
WRONG_SAMPLER_NAIVE_EXP = _one("sample", sample_naive_exp)
WRONG_SAMPLER_FIRST_QUERY = _one("sample", sample_first_query_only)
WRONG_SAMPLER_SHAPE = _one("sample", sample_transposed_output)
WRONG_ENCODER_TRANSPOSED = _one("encoder", encoder_transposed_weight)
WRONG_ENCODER_NO_LOGQ = _one("encoder", encoder_ignores_log_q)
WRONG_ENCODER_FLOAT32 = _one("encoder", encoder_float32_always)
WRONG_TOPK_TIE_RULE = _one("topk", topk_wrong_tie_rule)
WRONG_TOPK_UNSORTED = _one("topk", topk_unsorted)
WRONG_BRACKET_NO_EPS = _one("bracket", bracket_forgets_eps)
WRONG_BRACKET_IGNORES_TOL = _one("bracket", bracket_ignores_tol)
WRONG_BRACKET_SHRUNK_RADII = _one("bracket", bracket_shrunk_radii)
WRONG_NYSTROM_NO_CONST = _one("nystrom", nystrom_forgets_const)

#: name -> (backend, check, scenarios that must fail, phrase the report must contain).
#: Scenarios not listed must pass: the kit says *where* the bug shows, not just that one exists.
BUGS: dict[str, tuple[SimpleNamespace, str, set[str], str]] = {
    "sampler ignores the temperature": (
        WRONG_SAMPLER_TEMPERATURE, "sampler", {"flat", "moderate", "peaked", "duplicates", "mixed-norms", "huge-logits"},
        "largest excess"),
    "sampler truncated to the top 16": (
        WRONG_SAMPLER_TRUNCATED, "sampler", {"flat", "moderate", "peaked", "duplicates", "mixed-norms", "huge-logits"},
        "observed 0"),
    "sampler merges duplicate points": (WRONG_SAMPLER_DEDUPLICATES, "sampler", {"duplicates"}, "observed 0"),
    "sampler overflows without log space": (WRONG_SAMPLER_NAIVE_EXP, "sampler", {"huge-logits"}, "backend raised"),
    "sampler uses the first query for all": (
        WRONG_SAMPLER_FIRST_QUERY, "sampler", {"flat", "moderate", "peaked", "duplicates", "mixed-norms", "huge-logits"},
        "query 1"),
    "sampler returns (n, B)": (
        WRONG_SAMPLER_SHAPE, "sampler", {"format", "flat", "moderate", "peaked", "duplicates", "mixed-norms", "huge-logits"},
        "expected shape"),
    "encoder transposes square weights": (
        WRONG_ENCODER_TRANSPOSED, "encoder",
        {"square-gelu", "identity-linear", "relu-sampled-logq", "float32-sampled-logq"}, "loss"),
    "encoder ignores log Q": (
        WRONG_ENCODER_NO_LOGQ, "encoder", {"relu-sampled-logq", "float32-sampled-logq"}, "loss"),
    "encoder computes in float32": (
        WRONG_ENCODER_FLOAT32, "encoder",
        {"tanh-normalized", "square-gelu", "identity-linear", "relu-sampled-logq", "softplus-sampled-no-logq"},
        "oracle"),
    "top-k ties by the larger id": (
        WRONG_TOPK_TIE_RULE, "topk", {"integer-ties", "duplicates"}, "an exact tie must go to the smaller id"),
    "top-k not sorted by logit": (
        WRONG_TOPK_UNSORTED, "topk", {"integer-ties", "duplicates", "random", "k-equals-N", "huge-logits"}, "expected id"),
    "bracket forgets eps": (
        WRONG_BRACKET_NO_EPS, "bracket", {"loose", "medium", "tight", "duplicates", "huge-logits", "one-sided"}, "log Z"),
    "bracket ignores tol": (
        WRONG_BRACKET_IGNORES_TOL, "bracket", {"loose", "medium", "tight", "duplicates", "huge-logits", "one-sided"},
        "wider than tol"),
    "bracket radii 1% too small": (WRONG_BRACKET_SHRUNK_RADII, "bracket", {"one-sided"}, "upper bound below log Z"),
    "Nystrom forgets the constant feature": (WRONG_NYSTROM_NO_CONST, "nystrom", {"linear-const"}, "backend"),
}
