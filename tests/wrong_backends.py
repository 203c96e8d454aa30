"""Backends for testing the conformance kit: one correct independent port, many wrong ones.

``CORRECT_NUMPY`` is a NumPy implementation of four protocols written without
the reference's code (its own sampler, kernels and solves), so it shows that a
correct *independent* implementation passes. Every ``WRONG_*`` backend has one
deliberate, realistic bug (named in its docstring and in ``BUGS``), together
with the scenario that must catch it and a phrase the report must contain;
``tests/test_conformance.py`` runs them all.

``GALLERY`` checks the sampler check itself: planted precision and sampling
bugs (bfloat16 logits, a float16 softmax, draws without replacement, a stale
index), and what real top-k libraries do, written in NumPy (tied ids in
decreasing order as FAISS returns them, a float32 exact top-k declared and
undeclared, an inverted file with one probe, ``-1`` padding), each a full
backend (``CORRECT_NUMPY`` with one callable swapped) with the verdict the kit
must give for every check and the scenarios that must catch it, next to a
float32 sampler and a declared float32 top-k that must pass. ``tree_bracket``
is a tree bracket written from the spec alone, whose radii the bracket
scenarios must catch when scaled by 0.99 or 0.5. The
precision samplers are that float32 sampler with one step changed, and each
i.i.d. one comes with its exact per-draw distribution, so the verdicts are
also derived, not only observed (``reference.conformance.power_against``).

``SpecDynamicIndex`` (``CORRECT_DYNAMIC``) is a cluster index of the dynamic
protocol written from the spec alone; each ``WRONG_DYNAMIC_*`` leaves out one
step of an update (``DYNAMIC_BUGS``: radii not grown after a move, a deleted id
still returned, inserted ids never returned, counts stale after a delete, a
Nystrom map applied to the landmarks only, a rebuild that drops inserted
targets), with the first step of the kit's script that must fail;
``tests/test_conformance_dynamic.py`` runs them.

Usable from the shell too, e.g.
``python -m reference conformance tests.wrong_backends:WRONG_TOPK_TIE_RULE``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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


# ----------------------------------------------------------------------------
# What real top-k libraries do, written in NumPy (no FAISS or PyTorch needed)
# ----------------------------------------------------------------------------

#: Query rows scored at once by the float32 top-k (bounds its (rows, N) float32 scores).
_ROWS = 8


def topk_float32(points, queries, k):
    """Correct in float32: the logits of float32-rounded inputs (a float32 matmul, as FAISS
    ``IndexFlatIP`` or ``torch.topk`` on float32 embeddings compute them), then ordered by
    (-score, id), as reference/conformance/README.md recommends re-sorting such a library's output. Its logits
    differ from the float64 ones by float32 rounding, so two targets closer than that may come
    in either order: it passes when it declares ``dtype = "float32"``."""
    z = points.astype(np.float32)
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    for start in range(0, queries.shape[0], _ROWS):
        scores = queries[start:start + _ROWS].astype(np.float32) @ z.T
        out[start:start + _ROWS] = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return out


def topk_float32_one_replaced(points, queries, k):
    """Bug: :func:`topk_float32` with one true neighbour (rank k // 2) replaced by the next one
    down (its rank k), in every row."""
    if k >= points.shape[0]:
        return topk_float32(points, queries, k)
    ids = topk_float32(points, queries, k + 1)
    ids[:, k // 2] = ids[:, k]
    return ids[:, :k]


def topk_ivf_one_probe(points, queries, k):
    """Bug (an approximate index): an inverted file with one probe, in the manner of FAISS
    ``IndexIVFFlat`` with ``nprobe = 1``. sqrt(N) lists from 3 rounds of k-means (seeded),
    each query searches only the list whose centroid has the largest inner product with it,
    exactly, and pads with -1 when that list holds fewer than k targets."""
    N = points.shape[0]
    n_lists = max(1, int(round(np.sqrt(N))))
    centroids = points[np.random.default_rng(0).choice(N, n_lists, replace=False)]
    for _ in range(3):
        d2 = (points ** 2).sum(1)[:, None] - 2 * points @ centroids.T + (centroids ** 2).sum(1)[None, :]
        assign = np.argmin(d2, axis=1)
        for c in range(n_lists):
            if (assign == c).any():
                centroids[c] = points[assign == c].mean(axis=0)
    probe = np.argmax(queries @ centroids.T, axis=1)
    out = np.full((queries.shape[0], k), -1, dtype=np.int64)
    for b, c in enumerate(probe):  # a loop over queries: test code
        members = np.flatnonzero(assign == c)
        scores = points[members] @ queries[b]
        best = members[np.lexsort((members, -scores))][:k]
        out[b, :best.size] = best
    return out


def topk_padding(points, queries, k):
    """Bug: exact, but at most 8 results per query and the rest padded with -1 (an HNSW
    search whose candidate list is shorter than k)."""
    ids = numpy_topk(points, queries, k)
    ids[:, 8:] = -1
    return ids


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


def _median_tree(points: np.ndarray) -> list[tuple[np.ndarray, list[int]]]:
    """A binary tree written from the spec alone: each node (its ids, its children), split at the
    median of its widest coordinate down to single points; node 0 is the root."""
    nodes: list[tuple[np.ndarray, list[int]]] = [(np.arange(points.shape[0]), [])]
    stack = [0]
    while stack:
        v = stack.pop()
        ids = nodes[v][0]
        if ids.size == 1:
            continue
        axis = int(np.argmax(np.ptp(points[ids], axis=0)))
        order = ids[np.argsort(points[ids, axis], kind="stable")]
        for half in (order[: ids.size // 2], order[ids.size // 2:]):
            nodes[v][1].append(len(nodes))
            nodes.append((half, []))
            stack.append(len(nodes) - 1)
    return nodes


def tree_bracket(points, queries, tol, *, radius_scale: float = 1.0):
    """A tree bracket from the spec: node bounds log n_v + <q, r_v> -/+ ||q|| rho_v (r_v the mean,
    rho_v the largest distance to it, times ``radius_scale``), cut refined from the root by
    splitting the node of widest bound until hi - lo <= tol (a loop over queries: test code)."""
    nodes = _median_tree(points)
    reps = np.stack([points[ids].mean(axis=0) for ids, _ in nodes])
    rho = radius_scale * np.array([np.linalg.norm(points[ids] - reps[v], axis=1).max() for v, (ids, _) in
                                   enumerate(nodes)])
    log_n = np.log([ids.size for ids, _ in nodes])
    lo, hi = np.empty(queries.shape[0]), np.empty(queries.shape[0])
    for b, q in enumerate(queries):
        centre, eps = log_n + reps @ q, np.linalg.norm(q) * rho
        cut = [0]
        while True:
            lo[b], hi[b] = logsumexp(centre[cut] - eps[cut]), logsumexp(centre[cut] + eps[cut])
            wide = [v for v in cut if nodes[v][1]]
            if hi[b] - lo[b] <= tol or not wide:
                break
            v = max(wide, key=lambda u: centre[u] + eps[u])
            cut.remove(v)
            cut += nodes[v][1]
    return lo, hi


def bracket_tree_radii_099(points, queries, tol):
    """Bug: :func:`tree_bracket` with every radius 1% too small."""
    return tree_bracket(points, queries, tol, radius_scale=0.99)


def bracket_tree_radii_half(points, queries, tol):
    """Bug: :func:`tree_bracket` with every radius halved."""
    return tree_bracket(points, queries, tol, radius_scale=0.5)


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
WRONG_BRACKET_TREE_099 = _one("bracket", bracket_tree_radii_099)
WRONG_BRACKET_TREE_HALF = _one("bracket", bracket_tree_radii_half)

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
    "sampler overflows without log space": (WRONG_SAMPLER_NAIVE_EXP, "sampler", {"huge-logits"}, "raised ValueError"),
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
        WRONG_TOPK_UNSORTED, "topk", {"integer-ties", "duplicates", "random", "k-equals-N", "huge-logits", "near-duplicates"},
        "not sorted by logit"),
    "bracket forgets eps": (
        WRONG_BRACKET_NO_EPS, "bracket",
        {"loose", "medium", "tight", "duplicates", "huge-logits", "one-sided", "two-points", "cross", "extreme-point"},
        "log Z"),
    "bracket ignores tol": (
        WRONG_BRACKET_IGNORES_TOL, "bracket", {"loose", "medium", "tight", "duplicates", "huge-logits", "one-sided"},
        "wider than tol"),
    "bracket radii 1% too small": (
        WRONG_BRACKET_SHRUNK_RADII, "bracket", {"one-sided", "two-points"}, "upper bound below log Z"),
    "tree bracket, radii 1% too small": (
        WRONG_BRACKET_TREE_099, "bracket", {"two-points", "cross", "extreme-point"}, "upper bound below log Z"),
    "tree bracket, radii halved": (
        WRONG_BRACKET_TREE_HALF, "bracket", {"one-sided", "two-points", "cross", "extreme-point"},
        "upper bound below log Z"),
    "Nystrom forgets the constant feature": (WRONG_NYSTROM_NO_CONST, "nystrom", {"linear-const"}, "backend"),
}


# ----------------------------------------------------------------------------
# The gallery: planted precision and sampling bugs, and a float32 sampler that must pass
# ----------------------------------------------------------------------------
#
# The precision samplers share one float32 pipeline (float32 logits, float32
# softmax, float32 inverse CDF with float32 uniforms) and change one step of it,
# so the gallery separates what the kit demands (the logits) from what it
# tolerates (float32 arithmetic everywhere, float16 exp after a float32 shift).


def bfloat16_round(x: Any) -> np.ndarray:
    """float32 -> bfloat16 -> float32, rounding to nearest even as hardware conversions do.

    bfloat16 keeps the sign, the 8 exponent bits and the top 7 of the 23
    stored mantissa bits of a float32 (8 significant bits, relative spacing
    2^-7): add half a unit of the 16 dropped bits (minus one unless the kept
    last bit is odd, which makes exact halves go to even), then clear them.
    NumPy has no bfloat16, hence the bit operations on the float32 view
    (finite inputs; values that round beyond the float32 range become inf).
    """
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    odd = (bits >> np.uint32(16)) & np.uint32(1)
    return ((bits + np.uint32(0x7FFF) + odd) & np.uint32(0xFFFF0000)).view(np.float32)


def _logits_float32(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    return queries.astype(np.float32) @ points.astype(np.float32).T


def _softmax_float32(a: np.ndarray) -> np.ndarray:
    w = np.exp(a - a.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True)


def _cdf_float32(P: np.ndarray) -> np.ndarray:
    return np.cumsum(P.astype(np.float32), axis=1, dtype=np.float32)


def _inverse_cdf_float32(P: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n draws per row of P by inverse CDF, all in float32 (cumulative sums and uniforms)."""
    rng = np.random.default_rng(seed)
    cdf = _cdf_float32(P)
    u = rng.random((P.shape[0], n), dtype=np.float32) * cdf[:, -1:]
    ids = np.stack([np.searchsorted(c, uu, side="right") for c, uu in zip(cdf, u)])
    return np.minimum(ids, P.shape[1] - 1)


def _distribution_float32(P: np.ndarray) -> np.ndarray:
    """The exact per-draw distribution of :func:`_inverse_cdf_float32` on P: the gaps of
    its float32 CDF (ignoring the 2^-24 grid of the float32 uniforms)."""
    cdf = _cdf_float32(P).astype(np.float64)
    return np.diff(cdf, axis=1, prepend=0.0) / cdf[:, -1:]


def float32_probabilities(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Correct: logits and softmax in float32 (max-shifted)."""
    return _softmax_float32(_logits_float32(points, queries))


def bfloat16_logit_probabilities(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Bug: the logits rounded to bfloat16 (a bf16 matmul output), then a float32 softmax."""
    return _softmax_float32(bfloat16_round(_logits_float32(points, queries)))


def float16_softmax_probabilities(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Bug: the softmax in float16: the logits cast to float16, then max-shift, exp and
    normalisation in float16 (relative spacing 2^-10: ~8 at logits of 1e4)."""
    a = _logits_float32(points, queries).astype(np.float16)
    w = np.exp(a - a.max(axis=1, keepdims=True))
    return (w / w.sum(axis=1, keepdims=True, dtype=np.float16)).astype(np.float32)


def float16_exp_probabilities(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Tolerated: the max-shift in float32, only exp and normalisation in float16 (the
    shifted logits are <= 0 and small where the mass is, so every probability keeps ~5e-4
    relative precision; below ~6e-8 float16 flushes them to zero)."""
    a = _logits_float32(points, queries)
    w = np.exp((a - a.max(axis=1, keepdims=True)).astype(np.float16))
    return (w / w.sum(axis=1, keepdims=True, dtype=np.float16)).astype(np.float32)


#: The planted stale index lags by this much: every target vector has moved by about
#: STALE_DRIFT times its norm (a random direction) since the index was built.
STALE_DRIFT = 0.01


def stale_points(points: np.ndarray) -> np.ndarray:
    """The index's old copy of ``points``: a fixed random drift of relative size STALE_DRIFT
    (fixed seed: the index was built once, whatever seed the draws get)."""
    rng = np.random.default_rng(20240601)
    scale = np.linalg.norm(points, axis=1, keepdims=True) / np.sqrt(points.shape[1])
    return points + STALE_DRIFT * scale * rng.standard_normal(points.shape)


def stale_index_probabilities(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Bug: an exact float32 softmax, over the index's old vectors (:func:`stale_points`)."""
    return float32_probabilities(stale_points(points), queries)


def float32_sample(points, queries, n, seed):
    """Correct: :func:`float32_probabilities`, inverse CDF in float32."""
    return _inverse_cdf_float32(float32_probabilities(points, queries), n, seed)


def sample_bfloat16_logits(points, queries, n, seed):
    """Bug: :func:`bfloat16_logit_probabilities`, otherwise the float32 sampler."""
    return _inverse_cdf_float32(bfloat16_logit_probabilities(points, queries), n, seed)


def sample_float16_softmax(points, queries, n, seed):
    """Bug: :func:`float16_softmax_probabilities`, otherwise the float32 sampler."""
    return _inverse_cdf_float32(float16_softmax_probabilities(points, queries), n, seed)


def sample_float16_exp(points, queries, n, seed):
    """Tolerated: :func:`float16_exp_probabilities`, otherwise the float32 sampler."""
    return _inverse_cdf_float32(float16_exp_probabilities(points, queries), n, seed)


def sample_stale_index(points, queries, n, seed):
    """Bug: :func:`stale_index_probabilities`, otherwise the float32 sampler."""
    return _inverse_cdf_float32(stale_index_probabilities(points, queries), n, seed)


def sample_without_replacement(points, queries, n, seed):
    """Bug: n *distinct* ids per query (Gumbel top-n, the usual way to draw without
    replacement), so it can return only N columns when n > N."""
    a = queries @ points.T
    g = a + np.random.default_rng(seed).gumbel(size=a.shape)
    return np.argsort(-g, axis=1)[:, :n]


#: Round size of :func:`sample_distinct_in_rounds`.
ROUND = 16


def sample_distinct_in_rounds(points, queries, n, seed):
    """Bug: the n draws made as rounds of ROUND distinct ids (Gumbel top-16 per round;
    like calling ``torch.multinomial(P, 16)``, whose default is without replacement,
    n / 16 times): a target of probability 0.98 gets at most one draw in 16."""
    rng = np.random.default_rng(seed)
    a = queries @ points.T
    B, N = a.shape
    m = min(ROUND, N)
    rounds = -(-n // m)
    g = a[:, None, :] + rng.gumbel(size=(B, rounds, N))
    ids = np.argsort(-g, axis=2)[:, :, :m] if m == N else np.argpartition(-g, m - 1, axis=2)[:, :, :m]
    return ids.reshape(B, rounds * m)[:, :n]


def _swap(attribute: str, fn, **declared: Any) -> SimpleNamespace:
    """CORRECT_NUMPY with one callable replaced (and attributes such as ``dtype`` declared)."""
    backend = SimpleNamespace(**vars(CORRECT_NUMPY), **declared)
    setattr(backend, attribute, fn)
    return backend


GALLERY_FLOAT32 = _swap("sample", float32_sample)
GALLERY_FLOAT16_EXP = _swap("sample", sample_float16_exp)
GALLERY_BFLOAT16_LOGITS = _swap("sample", sample_bfloat16_logits)
GALLERY_FLOAT16_SOFTMAX = _swap("sample", sample_float16_softmax)
GALLERY_STALE_INDEX = _swap("sample", sample_stale_index)
GALLERY_WITHOUT_REPLACEMENT = _swap("sample", sample_without_replacement)
GALLERY_DISTINCT_ROUNDS = _swap("sample", sample_distinct_in_rounds)
GALLERY_TOPK_REVERSED_TIES = _swap("topk", topk_wrong_tie_rule)
GALLERY_TOPK_FLOAT32_DECLARED = _swap("topk", topk_float32, dtype="float32")
GALLERY_TOPK_FLOAT32_UNDECLARED = _swap("topk", topk_float32)
GALLERY_TOPK_IVF = _swap("topk", topk_ivf_one_probe)
GALLERY_TOPK_PADDING = _swap("topk", topk_padding)


@dataclass(frozen=True)
class GalleryEntry:
    """One planted backend and what the kit must say about it.

    Attributes
    ----------
    name : str
    backend : SimpleNamespace
        A full backend: ``CORRECT_NUMPY`` with one callable swapped.
    verdicts : dict
        Check name -> "PASS", "FAIL" or "SKIP", as
        :attr:`reference.conformance.ConformanceReport.verdicts` at the defaults.
    caught_by : tuple of str
        Scenarios of the failing check that must be among its failures (empty for a pass).
    phrase : str
        Text the report must contain ("" for a pass).
    distribution : callable or None
        ``(points, queries) -> Q (B, N)``: the exact per-draw distribution of the
        sampler, when its draws are i.i.d. (None otherwise).
    why : str
        Why the kit gives this verdict.
    """

    name: str
    backend: SimpleNamespace
    verdicts: dict[str, str]
    caught_by: tuple[str, ...]
    phrase: str
    distribution: Callable[[np.ndarray, np.ndarray], np.ndarray] | None
    why: str


def _verdicts(failing: str | None = None) -> dict[str, str]:
    v = {"sampler": "PASS", "encoder": "SKIP", "bracket": "PASS", "topk": "PASS", "nystrom": "PASS", "dynamic": "SKIP"}
    if failing is not None:
        v[failing] = "FAIL"
    return v


def _exact(probabilities):
    return lambda points, queries: _distribution_float32(probabilities(points, queries))


GALLERY: tuple[GalleryEntry, ...] = (
    GalleryEntry(
        "float32 sampler", GALLERY_FLOAT32, _verdicts(), (), "", _exact(float32_probabilities),
        "logits, softmax, CDF and uniforms in float32: TV 2e-4 from the exact softmax at logits of 1e4, "
        "<= 1.3e-6 elsewhere; it fails no more often than an exact sampler"),
    GalleryEntry(
        "float16 exp after a float32 shift", GALLERY_FLOAT16_EXP, _verdicts(), (), "", _exact(float16_exp_probabilities),
        "tolerated: after the shift float16 keeps every probability to ~5e-4 relative, TV <= 2.6e-4 "
        "in every scenario (what matters is the precision of the logits, not of exp)"),
    GalleryEntry(
        "bfloat16 logits", GALLERY_BFLOAT16_LOGITS, _verdicts("sampler"), ("huge-logits",), "largest excess",
        _exact(bfloat16_logit_probabilities),
        "bfloat16 spacing is 64 at logits of 1e4: TV 0.81 in huge-logits; in the other scenarios TV <= 0.017 "
        "(peaked), which the defaults do not resolve and --tv 0.02 does (peaked, mixed-norms)"),
    GalleryEntry(
        "float16 softmax", GALLERY_FLOAT16_SOFTMAX, _verdicts("sampler"), ("huge-logits",), "largest excess",
        _exact(float16_softmax_probabilities),
        "the logits cast to float16: spacing 8 at 1e4, TV 0.42 in huge-logits; in the other scenarios "
        "TV <= 0.005 (mixed-norms), which needs --tv 0.007 to be resolved"),
    GalleryEntry(
        "stale index (vectors moved 1%)", GALLERY_STALE_INDEX, _verdicts("sampler"),
        ("mixed-norms", "huge-logits"), "largest excess", _exact(stale_index_probabilities),
        "logit errors of ~0.01 |q| |z|: TV 0.10 in mixed-norms and 1.0 in huge-logits (each caught with "
        "probability > 1 - 1e-6), 0.038 in peaked (caught with probability 0.9995); flat, moderate and "
        "duplicates (TV <= 0.013) pass"),
    GalleryEntry(
        "without replacement (n distinct ids)", GALLERY_WITHOUT_REPLACEMENT, _verdicts("sampler"),
        ("format", "flat", "moderate", "peaked", "duplicates", "mixed-norms", "huge-logits"), "expected shape", None,
        "n distinct ids do not exist when n > N: it returns N columns (the format probe has N = 1, n = 6; "
        "every scenario has n >> N)"),
    GalleryEntry(
        "distinct ids in rounds of 16", GALLERY_DISTINCT_ROUNDS, _verdicts("sampler"),
        ("peaked", "huge-logits"), "largest deficit", None,
        "a target gets at most n/16 draws: a probability of 0.98 (peaked) shows as <= 0.0625; the flat "
        "scenario (all P < 0.02) cannot tell"),
    GalleryEntry(
        "top-k with reversed tie order (FAISS returns tied ids in decreasing order)", GALLERY_TOPK_REVERSED_TIES,
        _verdicts("topk"), ("integer-ties", "duplicates"), "an exact tie must go to the smaller id", None,
        "exact ties (integer coordinates, duplicate points) must go to the smaller id (P8)"),
    GalleryEntry(
        "float32 exact top-k declared float32", GALLERY_TOPK_FLOAT32_DECLARED, _verdicts(), (), "", None,
        "its logits are within the float32 rounding bound of the float64 ones, and exact float64 ties "
        "(integer coordinates, duplicates) stay exact in float32"),
    GalleryEntry(
        "float32 exact top-k undeclared", GALLERY_TOPK_FLOAT32_UNDECLARED, _verdicts("topk"), ("near-duplicates",),
        "near-tie swap", None,
        "copies 1e-9 apart tie in float32 and go by id; in float64 they are ordered, and the float64 "
        "tolerance (~4e-15 |q|.|z|) does not cover a gap of 1e-9"),
    GalleryEntry(
        "inverted file with one probe", GALLERY_TOPK_IVF, _verdicts("topk"), ("random", "near-duplicates"),
        "missing neighbours", None,
        "an approximate index: the true neighbours outside the probed list are missed (recall@k < 1), "
        "and lists shorter than k are padded with -1"),
    GalleryEntry(
        "padding ids (-1 beyond 8 results)", GALLERY_TOPK_PADDING, _verdicts("topk"),
        ("integer-ties", "duplicates", "random", "k-equals-N", "near-duplicates"), "padding", None,
        "-1 is not an id: every scenario with k > 8 fails, naming the query and the id"),
)


# ----------------------------------------------------------------------------
# Dynamic backends: a cluster index written from the spec alone, and its ports' mistakes
# ----------------------------------------------------------------------------
#
# ``SpecDynamicIndex`` uses no reference code (like ``CORRECT_NUMPY``): one level
# of clusters of about 16 targets, each with a centre r_c, a certified radius
# rho_c >= ||z_y - r_c|| of its members and a live count n_c; so
# a_y <= <q, r_c> + ||q|| rho_c for every member (P1). Top-k by branch and bound,
# a bracket from the node bounds refined until hi - lo <= tol, an exact
# rejection sampler (propose a cluster with weight n_c exp(<q, r_c> + ||q|| rho_c),
# a member uniformly, accept with probability exp(a_y - <q, r_c> - ||q|| rho_c)).
# It passes the dynamic check. Each ``WRONG_DYNAMIC_*`` leaves out one step of an
# update, as a port of the dynamic tree does, and fails at the step of the kit's
# script that exposes it (``DYNAMIC_BUGS``). Being a port, it has no run-time
# invariant checks of its own: what it gets wrong, it answers wrongly.


class SpecDynamicIndex:
    """A one-level cluster index with certified radii, repaired in place by its updates."""

    leaf = 16

    def __init__(self, points):
        self.z = np.array(points, dtype=np.float64)
        self.alive = np.ones(self.z.shape[0], dtype=bool)
        self._cluster()

    def _cluster(self):
        live = np.flatnonzero(self.alive)
        C = max(1, -(-live.size // self.leaf))
        rng = np.random.default_rng(0)
        centre = self.z[rng.choice(live, C, replace=False)]
        for _ in range(5):
            assign = np.argmin(((self.z[live, None, :] - centre[None]) ** 2).sum(-1), axis=1)
            for c in range(C):
                if (assign == c).any():
                    centre[c] = self.z[live[assign == c]].mean(axis=0)
        self.node = np.full(self.z.shape[0], -1)
        self.node[live] = np.argmin(((self.z[live, None, :] - centre[None]) ** 2).sum(-1), axis=1)
        self.centre = centre
        self.radius = np.zeros(C)
        self.count = np.bincount(self.node[live], minlength=C)
        self._grow(live)

    def _grow(self, ids):
        ids = ids[self.node[ids] >= 0]
        dist = np.linalg.norm(self.z[ids] - self.centre[self.node[ids]], axis=1)
        np.maximum.at(self.radius, self.node[ids], dist * (1 + 1e-12))

    def _members(self, c):
        return np.flatnonzero(self.node == c)

    # updates
    def move(self, ids, vectors):
        self.z[ids] = vectors
        self._grow(ids)

    def insert(self, vectors):
        ids = np.arange(self.z.shape[0], self.z.shape[0] + vectors.shape[0])
        self.z = np.vstack([self.z, vectors])
        self.alive = np.concatenate([self.alive, np.ones(vectors.shape[0], dtype=bool)])
        c = np.argmin(((vectors[:, None, :] - self.centre[None]) ** 2).sum(-1), axis=1)
        self.node = np.concatenate([self.node, c])
        np.add.at(self.count, c, 1)
        self._grow(ids)
        return ids

    def delete(self, ids):
        self.alive[ids] = False
        np.subtract.at(self.count, self.node[ids], 1)
        self.node[ids] = -1

    def rebuild(self, depth):
        self._cluster()  # one level: every depth is a full re-clustering

    # queries (a loop over queries: test code)
    def _upper(self, q):
        return self.centre @ q + np.linalg.norm(q) * self.radius

    def topk(self, queries, k):
        out = np.empty((queries.shape[0], k), dtype=np.int64)
        for b, q in enumerate(queries):
            ub = self._upper(q)
            margin = 1e-9 * np.linalg.norm(q) * (np.linalg.norm(self.centre, axis=1) + self.radius)
            ids, a = np.zeros(0, dtype=np.int64), np.zeros(0)
            for c in np.argsort(-ub, kind="stable"):
                if ids.size >= k and ub[c] + margin[c] < a[k - 1]:
                    break
                m = self._members(c)
                ids, a = np.concatenate([ids, m]), np.concatenate([a, self.z[m] @ q])
                keep = np.lexsort((ids, -a))[:k]
                ids, a = ids[keep], a[keep]
            out[b] = ids
        return out

    def bracket(self, queries, tol):
        lo, hi = np.empty(queries.shape[0]), np.empty(queries.shape[0])
        with np.errstate(divide="ignore"):
            log_n = np.log(self.count.astype(np.float64))
        for b, q in enumerate(queries):
            spread = np.linalg.norm(q) * self.radius
            L, U = log_n + self.centre @ q - spread, log_n + self.centre @ q + spread
            for c in np.argsort(-(U - L), kind="stable"):
                if logsumexp(U) - logsumexp(L) <= tol:
                    break
                m = self._members(c)
                L[c] = U[c] = logsumexp(self.z[m] @ q) if m.size else -np.inf
            lo[b], hi[b] = logsumexp(L), logsumexp(U)
        return lo, hi


class RadiiNotGrown(SpecDynamicIndex):
    """move() writes the new vectors but does not grow the radii (I3 broken after a move)."""

    def move(self, ids, vectors):
        self.z[ids] = vectors


class DeletedStillReturned(SpecDynamicIndex):
    """delete() marks the targets dead but leaves them in their clusters, which the queries read."""

    def delete(self, ids):
        self.alive[ids] = False


class InsertedNeverReturned(SpecDynamicIndex):
    """insert() stores the vectors and hands out ids but puts the targets in no cluster."""

    def insert(self, vectors):
        ids = np.arange(self.z.shape[0], self.z.shape[0] + vectors.shape[0])
        self.z = np.vstack([self.z, vectors])
        self.alive = np.concatenate([self.alive, np.ones(vectors.shape[0], dtype=bool)])
        self.node = np.concatenate([self.node, np.full(vectors.shape[0], -1)])
        return ids


class CountsStaleAfterDelete(SpecDynamicIndex):
    """delete() takes the targets out of their clusters but leaves the counts n_c as they were."""

    def delete(self, ids):
        self.alive[ids] = False
        self.node[ids] = -1


class MapOnLandmarksOnly(SpecDynamicIndex):
    """A Nystrom update (a move of every live row) applied to the 16 landmark rows (ids 0-15) only.

    The port re-encodes the landmarks and forgets to carry the map to the
    other rows; a move of a few rows is applied in full.
    """

    landmarks = 16

    def move(self, ids, vectors):
        if ids.shape[0] == int(self.alive.sum()):
            keep = ids < self.landmarks
            ids, vectors = ids[keep], vectors[keep]
        super().move(ids, vectors)


class RebuildDropsInserted(SpecDynamicIndex):
    """rebuild() re-clusters the rows of the original build only: targets inserted since are lost."""

    def __init__(self, points):
        super().__init__(points)
        self.built = points.shape[0]

    def rebuild(self, depth):
        inserted = self.alive.copy()
        inserted[: self.built] = False
        self.alive[inserted] = False
        self._cluster()
        self.alive[inserted] = True


def _dynamic(state_class) -> SimpleNamespace:
    return SimpleNamespace(dynamic_build=state_class)


CORRECT_DYNAMIC = _dynamic(SpecDynamicIndex)
WRONG_DYNAMIC_RADII = _dynamic(RadiiNotGrown)
WRONG_DYNAMIC_DELETE = _dynamic(DeletedStillReturned)
WRONG_DYNAMIC_INSERT = _dynamic(InsertedNeverReturned)
WRONG_DYNAMIC_COUNTS = _dynamic(CountsStaleAfterDelete)
WRONG_DYNAMIC_LANDMARKS = _dynamic(MapOnLandmarksOnly)
WRONG_DYNAMIC_REBUILD = _dynamic(RebuildDropsInserted)

#: name -> (backend, the first step of ``dynamic_script()`` that must fail, its op, the probes that
#: must fail at that step, a phrase the report must contain). Every earlier step must pass.
DYNAMIC_BUGS: dict[str, tuple[SimpleNamespace, int, str, set[str], str]] = {
    "radii not grown after a move": (
        WRONG_DYNAMIC_RADII, 3, "move", {"topk", "bracket"}, "missing neighbours"),
    "a deleted id still returned": (
        WRONG_DYNAMIC_DELETE, 6, "delete", {"topk", "bracket"}, "a deleted id came back: id 28 (deleted at step 6)"),
    "inserted ids never returned": (
        WRONG_DYNAMIC_INSERT, 4, "insert", {"topk", "bracket"}, "missing neighbours"),
    "node counts stale after a delete": (
        WRONG_DYNAMIC_COUNTS, 6, "delete", {"bracket"}, "lower bound above log Z"),
    "a Nystrom map applied to the landmarks only": (
        WRONG_DYNAMIC_LANDMARKS, 1, "nystrom", {"topk", "bracket"}, "missing neighbours"),
    "a rebuild that drops the targets inserted since the build": (
        WRONG_DYNAMIC_REBUILD, 8, "rebuild", {"topk", "bracket"}, "missing neighbours"),
}


def dynamic_build_spec(points):
    """A bare ``dynamic_build`` (the kit recognises it by its one parameter, ``points``)."""
    return SpecDynamicIndex(points)
