"""Scale and speed of the tree index against brute force (proofs/README.md sections 3-4).

For each N (default 1e4, 1e5, 1e6) and each data set (hierarchical clusters
from :func:`reference.data.make_targets`, and unclustered points from
:func:`reference.data.make_isotropic`, the honest worst case), with k = 64
index dimensions, the benchmark

1. builds the tree (:meth:`reference.tree.Tree.build`) and measures its time
   and peak memory;
2. calibrates the temperature beta so that the softmax over the N targets has
   a mean perplexity ``exp(H)`` near ``--perplexity`` (default 300, within
   the 100-1000 range of interest), by bisection on ``log beta`` over a
   sample of the queries; queries are ``q = beta u`` with ``u`` a unit
   vector in the direction of a held-out draw from the same distribution as
   the targets;
3. times, over ``--repeats`` (default 5) interleaved repeats: exact
   rejection sampling of ``--negatives`` targets per query
   (:func:`reference.sampling.rejection_sample`, P6) and exact top-10
   (:func:`reference.sampling.topk`, P8) for ``--queries`` queries, and the
   same two operations by brute force in NumPy (one matrix product per block
   of queries, then :func:`reference.softmax.draw_in_place` /
   :func:`reference.softmax.topk_ids`; beyond ~1e6 targets, blocks of 32
   queries meet the targets in tiles of 2^20 rows, 256 MiB of logits as at
   1e6, merged exactly: see :func:`brute_force_topk` and
   :func:`brute_force_sample`), in the same process; each repeat runs the
   four in turn, so that tree and brute force see the same machine load;
4. reports, as the median over the repeats with their range, the speed-ups
   and the cost per evaluated logit: the tree's time per query over the
   logits it evaluated per query (node inner products ``<q, r_v>`` plus
   target inner products ``<q, z_y>``, from the samplers' counters),
   brute force's time per query over N, and the ratio of the two (per
   repeat, tree and brute force of the same repeat); also the logits per
   query as a fraction of N, and the exponent of a least-squares fit of
   log(logits per query) against log N;
5. verifies, on the very queries it timed, that the tree's top-k equals the
   brute-force top-k and that every sampled id is a valid target id, and
   compares the mean ``log P`` of the tree's and the brute-force samples (both
   exact: their difference should be noise).

Then it prints each target of the benchmark issues (at the largest clustered
N, normally 1e6; the isotropic ones at the largest isotropic N) beside the
measured figure, with PASS or MISS. Timings are wall-clock on whatever else
the machine is doing: the load average is recorded next to every phase, and
the processor model (``/proc/cpuinfo``) with the machine. The cost of a
logit depends on the processor (brute force streams contiguous rows through
one matrix product; the tree gathers rows and scores them in small batched
products), so the speed-ups move between machines of one kind; the ratio of
the two costs per logit is what the targets bound.

The profile of the fast path (where the time goes at N = 1e6) and the
history of its design changes, with their measured effects, are in the
reference/PERFORMANCE.md, section "Profile and design history of the fast path"; a profile is
taken by running this benchmark under ``py-spy record``.

Memory. In RAM the tree keeps the generated targets as its points
(``Tree.build(..., copy=False)``), so the process holds two N x k float64
arrays: the points (read by brute force and the tree alike) and the tree's
depth-first copy, which its queries read contiguously. A tree operation whose
pilot evaluates many logits per query runs in blocks of ``ENTRY_CAP / L``
queries (``block=`` of the samplers), so every query is timed at any N; the
perplexity calibration keeps the logits of its queries only up to 1 GiB and
streams them tile by tile beyond. The peak resident memory of the query
phase (calibration, timing and checks) above the size before the data is
recorded beside the build's.

``--preset paper-scale`` runs N = 1e4, 1e5, 1e6 and 2e7 at k = 32 on the
clustered data with depth 3 and with the depth of ``--depth auto``
(``--data clustered clustered_auto``), 200 queries and 3 repeats, and
judges ``TARGETS_LARGE`` at N = 2e7 for both; measured: 17 minutes and a
peak of 12.1 GiB of RAM on the idle 2-core machine of reference/PERFORMANCE.md.

Peak memory of the build is measured two ways: the process's peak resident
set size during the build (Linux ``VmHWM``, reset at the start of the phase
through ``/proc/self/clear_refs``) above the resident size before the data
of that N was generated, and the peak of :mod:`tracemalloc` (which tracks
NumPy's allocations) during the build, counting the input points array. The
larger of the two is compared with the target (with ``--memmap`` only the
traced figure: the targets are generated straight into a ``.npy`` file and
the tree is disk-backed, ``Tree.build(..., storage=DIR/tree_<data>_n<N>)``,
so the points and the tree's two N x k arrays live in files and the page
cache, not in the process's own memory; the tree's files are deleted after
each N).

Example::

    python -m reference bench                       # the full run (10-20 minutes on 2 busy cores)
    python -m reference bench --quick               # smoke test, a few seconds
    python -m reference bench --sizes 1e6 --data clustered --memmap /tmp/bench
    python -m reference bench --data clustered --depth auto   # cluster hierarchy deepening with N
    python -m reference bench --preset paper-scale --json reference/bench_paper_scale.json   # N up to 2e7
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import shutil
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import logsumexp

from reference._validation import (
    as_float_array,
    check_choice,
    check_int,
    check_output_dir,
    check_output_file,
    check_positive,
    check_rng,
)
from reference.data import make_isotropic, make_targets
from reference.jsonio import write_json
from reference import sampling
from reference.sampling import rejection_sample, topk
from reference.softmax import draw_in_place, topk_ids
from reference.tree import Tree

__all__ = [
    "BenchConfig",
    "DATASETS",
    "LARGE_N",
    "PRESETS",
    "TARGETS",
    "TARGETS_LARGE",
    "add_arguments",
    "brute_force_sample",
    "brute_force_topk",
    "calibrate_beta",
    "format_report",
    "make_queries",
    "perplexity",
    "processor_model",
    "streamed_perplexity",
    "run",
    "run_bench",
    "timing_summary",
]

#: Data sets: name -> generator of (n, dim) points (``seed`` keyword). ``clustered_auto``
#: is the clustered data with the cluster depth of ``--depth auto`` whatever ``--depth``
#: says, so that both hierarchies can be benchmarked side by side in one run.
DATASETS: dict[str, Callable[..., np.ndarray]] = {
    "clustered": make_targets,
    "clustered_auto": make_targets,
    "isotropic": make_isotropic,
}

#: The data sets whose depth is that of make_targets' cluster hierarchy: name -> depth rule
#: (None: ``--depth``).
_CLUSTER_DEPTH: dict[str, str | None] = {"clustered": None, "clustered_auto": "auto"}

#: Bytes of logits held at once by the brute-force baselines (one block of
#: queries times N). 256 MiB gives 32 queries per block at N = 1e6: large
#: enough that the matrix product runs at BLAS speed and the N x k points are
#: streamed only B / 32 times; smaller blocks were slower on the test machine.
BRUTE_BLOCK_BYTES = 1 << 28

#: Fewest queries per block of the brute-force baselines: where ``BRUTE_BLOCK_BYTES`` of
#: logits hold fewer (N beyond ~1e6), the targets are taken in tiles instead (``_tiles``).
BRUTE_MIN_QUERIES = 32

#: Queries of the pilot run that sizes the timed run of a tree operation.
PILOT_QUERIES = 8

#: Largest number of (query, cut entry) pairs a block of queries may hold in
#: a timed tree operation (~150 bytes each at the peak of the samplers'
#: refinement: ~1.5 GB); see ``_queries_to_time``.
ENTRY_CAP = 10_000_000

#: Wall-clock budget (s) of one timed run of a tree operation; see ``_queries_to_time``.
BUDGET_SECONDS = 60.0


#: Targets per leaf cluster of the clustered data with ``--depth auto``.
AUTO_CLUSTER_SIZE = 25

#: Sizes, queries and repeats of ``--quick`` (a smoke test of a few seconds).
QUICK = dict(sizes=(1000, 3000, 10000), queries=100, repeats=1, calibration_queries=16)

#: The benchmark issues' targets, checked at the largest N on the clustered data
#: (the ``isotropic_*`` ones at the largest N on the isotropic data; cost and time
#: ratios are medians over the repeats). name -> (description, comparison, threshold).
TARGETS: dict[str, tuple[str, str, float]] = {
    "sample_speedup": ("exact sampling speed-up over brute force", ">=", 5.0),
    "topk_speedup": ("exact top-10 speed-up over brute force", ">=", 10.0),
    "sample_fraction": ("logits evaluated per query, sampling (fraction of N)", "<=", 0.02),
    "topk_fraction": ("logits evaluated per query, top-10 (fraction of N)", "<=", 0.02),
    "sample_logit_cost": ("tree / brute-force cost per evaluated logit, sampling", "<=", 3.0),
    "topk_logit_cost": ("tree / brute-force cost per evaluated logit, top-10", "<=", 3.0),
    "isotropic_sample_time": ("isotropic data: tree / brute-force time, sampling", "<=", 2.0),
    "isotropic_topk_time": ("isotropic data: tree / brute-force time, top-10", "<=", 2.0),
    "build_seconds": ("tree build time (s)", "<=", 60.0),
    "build_memory": ("build peak memory / (3 x points + 1 GiB)", "<=", 1.0),
    "sample_exponent": ("exponent of logits per query vs N, sampling", "<=", 0.5),
    "topk_exponent": ("exponent of logits per query vs N, top-10", "<=", 0.5),
}

#: The N at which the targets are stated.
TARGET_N = 1_000_000

#: The paper's scale (over twenty million targets): the N of ``TARGETS_LARGE``.
LARGE_N = 20_000_000

#: The targets at the paper's scale, checked instead of ``TARGETS`` on each clustered data set
#: whose largest N is at least ``LARGE_N`` (``--preset paper-scale``). The memory ratios are
#: peak resident memory above the process's size before the data was generated, over
#: 2.5 x the float64 points + 1 GiB.
TARGETS_LARGE: dict[str, tuple[str, str, float]] = {
    **{name: (*TARGETS[name][:2], threshold) for name, threshold in (
        ("sample_speedup", 15.0), ("topk_speedup", 30.0), ("sample_fraction", 0.01), ("topk_fraction", 0.01),
        ("build_seconds", 900.0))},
    "build_memory": ("build peak memory / (2.5 x points + 1 GiB)", "<=", 1.0),
    "query_memory": ("query-phase peak memory / (2.5 x points + 1 GiB)", "<=", 1.0),
}

#: Smallest N of the second exponent fit, printed when smaller sizes were run too.
FIT_FROM_N = 100_000

#: ``--preset paper-scale``: N = 1e4, 1e5, 1e6 and 2e7 (exponents over all, and over 1e5 to 2e7), k = 32,
#: the clustered data with depth 3 and with the depth of ``--depth auto`` side by side,
#: 200 queries, 3 repeats (17 minutes idle, 28 under load 2-4, on the 2-core machine of reference/PERFORMANCE.md).
PRESETS: dict[str, dict[str, Any]] = {
    "paper-scale": dict(sizes=(10_000, 100_000, 1_000_000, LARGE_N), k=32, data=("clustered", "clustered_auto"),
                        queries=200, repeats=3),
}


def _memory_budget(n: int, points_bytes: int) -> int:
    """The memory target's limit in bytes: 3 x points + 1 GiB, or 2.5 x points + 1 GiB from ``LARGE_N`` on."""
    return int((2.5 if n >= LARGE_N else 3.0) * points_bytes) + _GIB

_GIB = 1 << 30
_MIB = 1 << 20


@dataclass
class BenchConfig:
    """Options of one benchmark run (the CLI options; see ``add_arguments``)."""

    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    data: tuple[str, ...] = ("clustered", "isotropic")
    k: int = 64
    queries: int = 1000
    negatives: int = 16
    topk: int = 10
    perplexity: float = 300.0
    calibration_queries: int = 64
    repeats: int = 5
    seed: int = 0
    branching: int = 8
    leaf_size: int = 32
    memmap: str | None = None
    quick: bool = False
    depth: int | str = 3

    def validated(self) -> "BenchConfig":
        """Return a checked copy, or raise ``ValueError`` naming the bad option."""
        if isinstance(self.sizes, (int, np.integer)) or not len(self.sizes):
            raise ValueError(f"sizes: expected a non-empty list of N, got {self.sizes!r}")
        sizes = tuple(sorted({check_int(n, "sizes", low=2) for n in self.sizes}))
        data = tuple(dict.fromkeys(check_choice(d, "data", DATASETS) for d in self.data))
        if not data:
            raise ValueError("data: expected at least one data set")
        k = check_int(self.k, "k", low=1)
        queries = check_int(self.queries, "queries", low=1)
        negatives = check_int(self.negatives, "negatives", low=1)
        top = check_int(self.topk, "topk", low=1, high=sizes[0])
        ppl = check_positive(self.perplexity, "perplexity")
        if not 1.0 < ppl < sizes[0]:
            raise ValueError(
                f"perplexity: expected a value in (1, smallest N = {sizes[0]}) (a softmax over N targets "
                f"has perplexity between 1 and N), got {ppl}"
            )
        cal = check_int(self.calibration_queries, "calibration_queries", low=1)
        repeats = check_int(self.repeats, "repeats", low=1)
        seed = check_int(self.seed, "seed", low=0)
        branching = check_int(self.branching, "branching", low=2)
        leaf_size = check_int(self.leaf_size, "leaf_size", low=1)
        if self.memmap is not None and not isinstance(self.memmap, (str, os.PathLike)):
            raise ValueError(f"memmap: expected a directory path, got {self.memmap!r}")
        depth = self.depth if self.depth == "auto" else check_int(self.depth, "depth", low=1)
        return BenchConfig(sizes, data, k, queries, negatives, top, ppl, min(cal, queries), repeats, seed,
                           branching, leaf_size, None if self.memmap is None else os.fspath(self.memmap),
                           bool(self.quick), depth)


# --------------------------------------------------------------------------
# Brute force (the baseline) and the perplexity calibration
# --------------------------------------------------------------------------

def _query_block(n: int, block_bytes: int = BRUTE_BLOCK_BYTES) -> int:
    """Queries per block so that a block of logits (block x n float64) fits in ``block_bytes``,
    but at least ``BRUTE_MIN_QUERIES`` (beyond ~1e6 targets the targets are then tiled)."""
    return max(BRUTE_MIN_QUERIES, block_bytes // (8 * n))


def _tiles(bq: int, tile: int | None) -> int:
    """Targets per tile of a brute-force block of ``bq`` queries: ``BRUTE_BLOCK_BYTES`` of logits.

    Up to N = ``BRUTE_BLOCK_BYTES / (8 BRUTE_MIN_QUERIES)`` (about 1e6) one tile holds all N
    targets and the baselines are single matrix products per block of queries; beyond, each
    block of 32 queries meets the targets in tiles of that many rows, so the work per tile
    (and its cost per logit) is that of the single product at 1e6 and the logits held stay
    at ``BRUTE_BLOCK_BYTES``.
    """
    if tile is not None:
        return check_int(tile, "tile", low=1)
    return max(1, BRUTE_BLOCK_BYTES // (8 * bq))


def _logit_tiles(Z: np.ndarray, Qb: np.ndarray, tile: int):
    """``(t0, Qb @ Z[t0:t0 + tile].T)`` for the tiles of the targets, in order."""
    for t0 in range(0, Z.shape[0], tile):
        yield t0, Qb @ Z[t0:t0 + tile].T


def _check_points_queries(points: Any, queries: Any) -> tuple[np.ndarray, np.ndarray]:
    Z = as_float_array(points, "points", ndim=2, finite=False)  # memmaps stay memmaps; no full scan
    Q = as_float_array(queries, "queries", ndim=2)
    if Q.shape[1] != Z.shape[1]:
        raise ValueError(f"queries: expected shape (B, {Z.shape[1]}) to match points, got {Q.shape}")
    return Z, Q


def brute_force_sample(points: Any, queries: Any, n: int, rng: np.random.Generator, *,
                       block: int | None = None, tile: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact softmax samples by brute force: all N logits, then inverse CDF (the baseline).

    For each block of queries: ``A = Q_b Z^T`` (one matrix product), then in
    place ``w = exp(A - max)``, cumulative sums ``W``, and for each draw the
    first ``j`` with ``W_j > u W_{N-1}`` (``u`` uniform in [0, 1);
    :func:`reference.softmax.draw_in_place`), so ``Pr(j) = exp(a_j) / Z`` up
    to float64 rounding of the sums (proofs/README.md section 2). Also returns
    ``log Z = max + log W_{N-1}``.

    Where the targets come in several tiles (N beyond ~1e6, see ``_tiles``),
    each tile ``t`` of the block is drawn from the same way (``n`` draws from
    its own softmax, and its mass ``w_t``), and each draw slot keeps its
    current id or switches to the tile's draw with probability
    ``w_t / (w_1 + ... + w_t)`` (one uniform per slot and tile): a target
    ``j`` of tile ``t`` ends in a slot with probability
    ``(w_t / W_t) prod_{s > t} (1 - w_s / W_s) (e^{a_j} / w_t) = e^{a_j} / Z``,
    the softmax again, with ``log Z = log (w_1 + ... + w_T)``. One tile is the
    single product above, draw for draw.

    Parameters
    ----------
    points : array_like (N, k)
        Target vectors z_y (an ``np.memmap`` is read in place).
    queries : array_like (B, k)
        Query vectors q (temperature folded in).
    n : int >= 1
        Draws per query (i.i.d., with replacement).
    rng : numpy.random.Generator
    block : int, optional
        Queries per matrix product; default: ``BRUTE_BLOCK_BYTES`` of logits,
        at least ``BRUTE_MIN_QUERIES``.
    tile : int, optional
        Targets per tile; default: ``BRUTE_BLOCK_BYTES`` of logits per block.

    Returns
    -------
    ids : (B, n) int64
    log_z : (B,) float64
    """
    Z, Q = _check_points_queries(points, queries)
    n = check_int(n, "n", low=1)
    rng = check_rng(rng)
    N = Z.shape[0]
    bq = _query_block(N) if block is None else check_int(block, "block", low=1)
    tile = _tiles(bq, tile)
    ids = np.empty((Q.shape[0], n), np.int64)
    log_z = np.empty(Q.shape[0])
    for b0 in range(0, Q.shape[0], bq):  # a batching loop over blocks of queries
        b1 = min(b0 + bq, Q.shape[0])
        for t0, A in _logit_tiles(Z, Q[b0:b1], tile):  # a batching loop over tiles of targets
            t_ids, t_log_w = draw_in_place(A, n, rng)
            if t0 == 0:
                ids[b0:b1], log_z[b0:b1] = t_ids, t_log_w
                continue
            total = np.logaddexp(log_z[b0:b1], t_log_w)
            switch = rng.random((b1 - b0, n)) < np.exp(t_log_w - total)[:, None]
            ids[b0:b1][switch] = t_ids[switch] + t0
            log_z[b0:b1] = total
    return ids, log_z


def brute_force_topk(points: Any, queries: Any, k: int, *, block: int | None = None, tile: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by brute force: all N logits, then :func:`reference.softmax.topk_ids` (the baseline).

    For each block of queries ``A = Q_b Z^T`` (one matrix product), then the
    k ids of largest logit in decreasing order, exact ties by the smaller id,
    at the k-th place too (P8's rule, that of :func:`reference.sampling.topk`).
    Ties are ties of the computed logits: two copies of a point get the same
    logit only as far as the matrix product computes them alike (the
    conformance kit therefore selects on logits computed once per distinct
    point, with the same :func:`reference.softmax.topk_ids`).

    Where the targets come in several tiles (N beyond ~1e6, see ``_tiles``),
    the top-k of each tile (same rule) is merged into the running top-k by
    sorting the 2k candidates on (decreasing logit, increasing id): the
    result is the top-k of all N under the same total order, since each
    tile's top-k holds every member of the overall top-k in that tile.

    Parameters
    ----------
    points : array_like (N, k_dim)
    queries : array_like (B, k_dim)
    k : int, 1 <= k <= N
    block : int, optional
        Queries per matrix product; default: ``BRUTE_BLOCK_BYTES`` of logits,
        at least ``BRUTE_MIN_QUERIES``.
    tile : int, optional
        Targets per tile; default: ``BRUTE_BLOCK_BYTES`` of logits per block.

    Returns
    -------
    ids : (B, k) int64
    logits : (B, k) float64
    """
    Z, Q = _check_points_queries(points, queries)
    N = Z.shape[0]
    k = check_int(k, "k", low=1, high=N)
    bq = _query_block(N) if block is None else check_int(block, "block", low=1)
    tile = _tiles(bq, tile)
    ids = np.empty((Q.shape[0], k), np.int64)
    vals = np.empty((Q.shape[0], k))
    for b0 in range(0, Q.shape[0], bq):  # a batching loop over blocks of queries
        b1 = min(b0 + bq, Q.shape[0])
        for t0, A in _logit_tiles(Z, Q[b0:b1], tile):  # a batching loop over tiles of targets
            t_ids = topk_ids(A, min(k, A.shape[1]))
            t_vals = np.take_along_axis(A, t_ids, axis=1)
            if t0 == 0:
                cand_ids, cand_vals = t_ids, t_vals
            else:
                cand_ids = np.concatenate([ids[b0:b1, :m], t_ids + t0], axis=1)
                cand_vals = np.concatenate([vals[b0:b1, :m], t_vals], axis=1)
            order = np.lexsort((cand_ids, -cand_vals), axis=-1)
            m = min(k, order.shape[1])
            ids[b0:b1, :m] = np.take_along_axis(cand_ids, order[:, :m], axis=1)
            vals[b0:b1, :m] = np.take_along_axis(cand_vals, order[:, :m], axis=1)
    return ids, vals


def perplexity(logits: Any) -> np.ndarray:
    """Perplexity ``exp(H)`` of the softmax of each row, ``H = log Z - sum_y P(y) a_y``.

    Parameters
    ----------
    logits : array_like (B, N)

    Returns
    -------
    (B,) float64, in [1, N].
    """
    a = as_float_array(logits, "logits", ndim=2)
    lse = logsumexp(a, axis=1)
    p = np.exp(a - lse[:, None])
    h = lse - np.einsum("bn,bn->b", p, a)
    return np.exp(np.clip(h, 0.0, np.log(a.shape[1])))


def _raw_logits(Z: np.ndarray, U: np.ndarray) -> np.ndarray:
    out = np.empty((U.shape[0], Z.shape[0]))
    bq = _query_block(Z.shape[0])
    for b0 in range(0, U.shape[0], bq):
        out[b0:b0 + bq] = U[b0:b0 + bq] @ Z.T
    return out


def streamed_perplexity(points: Any, queries: Any, *, tile: int | None = None) -> np.ndarray:
    """:func:`perplexity` of ``softmax(queries @ points.T)`` row by row, holding one tile of logits at a time.

    Blocks of queries and tiles of targets as in the brute-force baselines
    (``_tiles``); per query the running maximum ``m``, ``s = sum e^(a - m)``
    and ``t = sum e^(a - m) a`` are merged tile by tile, and
    ``H = m + log s - t / s``. With one tile it is :func:`perplexity` of the
    block, bit for bit.
    """
    Z, Q = _check_points_queries(points, queries)
    N = Z.shape[0]
    bq = _query_block(N)
    tile = _tiles(bq, tile)
    out = np.empty(Q.shape[0])
    for b0 in range(0, Q.shape[0], bq):  # a batching loop over blocks of queries
        b1 = min(b0 + bq, Q.shape[0])
        if tile >= N:
            out[b0:b1] = perplexity(Q[b0:b1] @ Z.T)
            continue
        m = np.full(b1 - b0, -np.inf)
        s_sum = np.zeros(b1 - b0)
        t_sum = np.zeros(b1 - b0)
        for _, A in _logit_tiles(Z, Q[b0:b1], tile):  # a batching loop over tiles of targets
            m_new = np.maximum(m, A.max(axis=1))
            scale = np.exp(m - m_new)
            w = np.exp(A - m_new[:, None])
            s_sum = s_sum * scale + w.sum(axis=1)
            t_sum = t_sum * scale + np.einsum("bn,bn->b", w, A)
            m = m_new
        h = m + np.log(s_sum) - t_sum / s_sum
        out[b0:b1] = np.exp(np.clip(h, 0.0, np.log(N)))
    return out


def calibrate_beta(points: Any, directions: Any, target: float, *, rtol: float = 0.01,
                   max_iter: int = 100) -> tuple[float, float]:
    """Temperature beta with mean perplexity of ``softmax(beta <u, z_y>)`` equal to ``target``.

    The mean over the rows ``u`` of ``directions`` of ``exp(H(beta))`` is
    non-increasing in beta (``dH/dbeta = -beta Var_P(a) <= 0``), from N at
    beta = 0 towards the number of tied maxima as beta grows, so bisection on
    ``log beta`` finds it: first double beta until the mean perplexity falls
    below ``target``, then bisect until it is within ``rtol`` (relative).

    Parameters
    ----------
    points : array_like (N, k)
    directions : array_like (B, k)
        Query directions (usually unit vectors); the queries are ``beta u``.
    target : float, 1 < target < N
    rtol : float > 0, default 0.01
    max_iter : int, default 100

    The logits ``U Z^T`` are kept while they take at most 1 GiB; beyond (tens
    of millions of targets), every step recomputes them tile by tile
    (:func:`streamed_perplexity`), so memory stays at one tile.

    Returns
    -------
    beta : float
    measured : float
        The mean perplexity at ``beta`` (within ``rtol`` of ``target``
        unless ``max_iter`` bisection steps did not get there).
    """
    Z, U = _check_points_queries(points, directions)
    target = check_positive(target, "target")
    if not 1.0 < target < Z.shape[0]:
        raise ValueError(f"target: expected a perplexity in (1, N = {Z.shape[0]}), got {target}")
    rtol = check_positive(rtol, "rtol")
    if U.shape[0] * Z.shape[0] * 8 <= 4 * BRUTE_BLOCK_BYTES:  # the logits are kept (<= 1 GiB)
        A = _raw_logits(Z, U)
        rows = max(1, (1 << 24) // Z.shape[0])  # rows per chunk: bounds the temporaries to ~128 MiB each

        def ppl(beta: float) -> float:
            return float(np.concatenate([perplexity(beta * A[i:i + rows])
                                         for i in range(0, A.shape[0], rows)]).mean())
    else:  # beyond 1 GiB of logits (N beyond ~2e6): recomputed tile by tile at every beta

        def ppl(beta: float) -> float:
            return float(streamed_perplexity(Z, beta * U).mean())

    lo, hi = 0.0, 1.0
    p_hi = ppl(hi)
    it = 0
    while p_hi > target:
        if it >= max_iter:
            raise ValueError(f"target: perplexity {target} not reached (still {p_hi:.4g} at beta = {hi:.4g})")
        lo, hi, it = hi, 2.0 * hi, it + 1
        p_hi = ppl(hi)
    beta, measured = hi, p_hi
    for _ in range(max_iter):
        if abs(measured / target - 1.0) <= rtol:
            break
        beta = math.sqrt(lo * hi) if lo > 0 else hi / 2.0
        measured = ppl(beta)
        if measured > target:
            lo = beta
        else:
            hi = beta
    return beta, measured


def make_queries(directions: np.ndarray, beta: float) -> np.ndarray:
    """Queries ``q = beta u / ||u||`` (temperature folded in, proofs/README.md section 2)."""
    U = as_float_array(directions, "directions", ndim=2)
    beta = check_positive(beta, "beta")
    norm = np.linalg.norm(U, axis=1, keepdims=True)
    if np.any(norm == 0):
        raise ValueError("directions: expected non-zero rows, got a zero vector")
    return beta * U / norm


# --------------------------------------------------------------------------
# Measurement helpers
# --------------------------------------------------------------------------

def _proc_status() -> dict[str, int] | None:
    """``VmRSS`` and ``VmHWM`` of this process in bytes (Linux), else None."""
    try:
        with open("/proc/self/status") as fh:
            text = fh.read()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) * 1024
    return out if len(out) == 2 else None


def _reset_rss_peak() -> bool:
    """Reset the peak resident set size (Linux >= 4.0, ``clear_refs`` 5); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


#: Every ``VmHWM`` read by a :class:`_Peak`, at its start (before the reset erases it) and at its
#: end: a phase's peak is the largest reading since it started, so a nested phase's reset (the
#: timed operations inside the query phase) hides nothing from the enclosing one.
_HWM_SEEN: list[int] = []


class _Peak:
    """Peak memory of a phase: peak RSS above a baseline, and the tracemalloc peak if tracing.

    Phases may nest: the peak RSS of a phase is the largest ``VmHWM`` read since it began,
    including the readings that nested phases took just before resetting it.
    """

    def __init__(self, baseline_rss: int | None) -> None:
        self.baseline = baseline_rss
        self.rss_peak: int | None = None
        self.traced_peak: int | None = None

    def __enter__(self) -> "_Peak":
        st = _proc_status()
        if st is not None:
            _HWM_SEEN.append(st["VmHWM"])  # the peak so far belongs to the enclosing phases
        self._first = len(_HWM_SEEN)
        self._rss_ok = _reset_rss_peak() and self.baseline is not None
        if tracemalloc.is_tracing():
            tracemalloc.reset_peak()
        return self

    def __exit__(self, *exc: Any) -> None:
        st = _proc_status()
        if st is not None:
            _HWM_SEEN.append(st["VmHWM"])
        if self._rss_ok and st is not None:
            self.rss_peak = max(0, max(_HWM_SEEN[self._first:]) - self.baseline)
        if tracemalloc.is_tracing():
            self.traced_peak = tracemalloc.get_traced_memory()[1]


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def processor_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The processor model: ``model name`` of the first processor in ``cpuinfo`` (Linux), with its family and model.

    Virtual machines often show only a generic name ("AMD EPYC"); the
    ``cpu family`` and ``model`` numbers still tell processor generations
    apart (family 25 model 17 is Zen 4), so they are appended when present:
    ``"AMD EPYC (family 25, model 17)"``. Without a ``model name`` (or
    without the file), ``platform.processor()``.
    """
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                if not line.strip():
                    if fields:
                        break                      # end of the first processor's block
                    continue
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        fields = {}
    name = fields.get("model name", "")
    if not name:
        return platform.processor() or "unknown"
    family, model = fields.get("cpu family", ""), fields.get("model", "")
    return f"{name} (family {family}, model {model})" if family and model else name


def _machine() -> dict[str, Any]:
    env = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return dict(cpus=os.cpu_count(), processor=processor_model(), platform=platform.platform(),
                python=platform.python_version(), numpy=np.__version__, memory_bytes=_total_memory(),
                thread_env={k: v for k, v in env.items() if v is not None})


def _total_memory() -> int | None:
    """``MemTotal`` of ``/proc/meminfo`` in bytes (Linux), else None."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


# --------------------------------------------------------------------------
# Timing the tree operations
# --------------------------------------------------------------------------

def _queries_to_time(op: Callable[..., Any], Q: np.ndarray,
                     counters_of: Callable[[Any], dict[str, int]], n_targets: int
                     ) -> tuple[int, str | None, int | None]:
    """How many of the queries ``Q`` a tree operation is timed on (and why not all), and its query block.

    A pilot on ``PILOT_QUERIES`` queries (which also warms the caches)
    measures the logits per query ``L`` and the time per query. Where the tree
    prunes little but not nothing (``L`` a large fraction of N, below N), or N
    is tens of millions, the samplers' flat (query, entry) arrays would hold
    ~``512 L`` entries per block of 512 queries; the operation is then run
    with ``block = ENTRY_CAP // L`` queries per block (``block=`` of
    :func:`reference.sampling.rejection_sample` and
    :func:`reference.sampling.topk`), which bounds its working memory and
    times every query. A run beyond ``BUDGET_SECONDS`` is cut to
    ``BUDGET_SECONDS / (time per query)`` queries ("time"). With ``L >= N``
    every target was scored for every query: the samplers' dense fallback,
    which holds one block of logits, not entries, so the block stays. The
    report says how many were timed, why, and the block; costs are compared
    per query.

    Returns
    -------
    m : int
        Queries to time (the first ``m`` of ``Q``).
    why : str or None
        ``"time"`` if ``m < len(Q)``, else None.
    block : int or None
        Queries per block to pass as ``block=`` (None: the default, 512).
    """
    B = Q.shape[0]
    pilot = min(B, PILOT_QUERIES)
    t0 = time.perf_counter()
    out = op(Q[:pilot])
    per_query = (time.perf_counter() - t0) / pilot
    c = counters_of(out)
    L = max(1.0, (c["node_logits"] + c["target_logits"]) / pilot)
    block = None
    if L < n_targets and min(B, sampling._QUERY_BLOCK) * L > ENTRY_CAP:
        block = max(1, int(ENTRY_CAP // L))
    m, why = B, None
    if m * per_query > BUDGET_SECONDS:
        m, why = max(pilot, int(BUDGET_SECONDS / per_query)), "time"
    return (B, None, block) if m >= B else (m, why, block)


def _time_interleaved(ops: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, Any]]:
    """Run every operation once per repeat, in turn (so that all see the same machine load).

    Returns, per operation, the wall times of all repeats, the last output,
    and the peak resident memory of its first run above the resident size
    just before it.
    """
    res: dict[str, dict[str, Any]] = {name: dict(times=[], out=None, peak_rss=None) for name in ops}
    for r in range(repeats):
        for name, fn in ops.items():
            with _Peak(_rss_now()) as peak:
                t0 = time.perf_counter()
                out = fn()
                res[name]["times"].append(time.perf_counter() - t0)
            res[name]["out"] = out
            if r == 0:
                res[name]["peak_rss"] = peak.rss_peak
            del out
    return res


def _rss_now() -> int | None:
    st = _proc_status()
    return None if st is None else st["VmRSS"]


def timing_summary(tree_runs: Sequence[float], tree_queries: int, brute_runs: Sequence[float], brute_queries: int,
                   logits_per_query: float, n: int) -> dict[str, Any]:
    """Median and range over interleaved repeats of the times per query, speed-up and cost per logit.

    Repeat ``r`` timed the tree on ``tree_queries`` queries (``tree_runs[r]``
    seconds) and brute force on ``brute_queries`` (``brute_runs[r]``) under
    the same load. The tree's cost per evaluated logit is its time per query
    over ``logits_per_query``; brute force's is its time per query over the
    ``n`` logits it computes per query. The speed-up and the ratio of the
    costs are given for the medians (``speedup``, ``logit_cost_ratio``) and,
    repeat by repeat, as a range (``*_range``: min and max over the repeats).
    """
    t = np.asarray(tree_runs, float) / tree_queries
    b = np.asarray(brute_runs, float) / brute_queries
    tree_pq, brute_pq = float(np.median(t)), float(np.median(b))
    per_logit_t, per_logit_b = t / logits_per_query, b / n
    return dict(
        tree_seconds=float(np.median(tree_runs)), tree_runs=list(tree_runs), tree_per_query=tree_pq,
        tree_per_query_range=[float(t.min()), float(t.max())],
        brute_seconds=float(np.median(brute_runs)), brute_runs=list(brute_runs), brute_per_query=brute_pq,
        brute_per_query_range=[float(b.min()), float(b.max())],
        speedup=brute_pq / tree_pq, speedup_range=[float((b / t).min()), float((b / t).max())],
        tree_ns_per_logit=1e9 * tree_pq / logits_per_query, brute_ns_per_logit=1e9 * brute_pq / n,
        logit_cost_ratio=(tree_pq / logits_per_query) / (brute_pq / n),
        logit_cost_ratio_range=[float((per_logit_t / per_logit_b).min()), float((per_logit_t / per_logit_b).max())],
    )


# --------------------------------------------------------------------------
# One data set at one N
# --------------------------------------------------------------------------

def cluster_depth(depth: int | str, n: int) -> int:
    """Levels of cluster centres of the clustered data: ``depth``, or for ``"auto"`` the depth that
    keeps about ``AUTO_CLUSTER_SIZE`` targets per leaf cluster, ``round(log_8(N / 25))`` (>= 1)."""
    if depth == "auto":
        return max(1, round(math.log(n / AUTO_CLUSTER_SIZE, 8)))
    return check_int(depth, "depth", low=1)


def _make_points(cfg: BenchConfig, data: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(targets (n, k), held-out query directions (queries, k)) of one data set.

    ``n + queries`` points are drawn from the data set's distribution; the
    last ``queries`` rows are held out as query directions. With ``--memmap``
    the targets are generated straight into
    ``<dir>/targets_<data>_n<N>_k<k>_seed<seed>.npy`` (the generators'
    ``out=``; the same values as in RAM) and returned as a read-only
    ``np.memmap``, so N beyond RAM never passes through memory.
    """
    depth = _data_depth(cfg, data, n)
    kw = {} if depth is None else dict(depth=depth)
    if cfg.memmap is None:  # the targets are a view of the first n rows: no second N x k copy
        allp = DATASETS[data](n + cfg.queries, cfg.k, seed=cfg.seed, **kw)
        return allp[:n], allp[n:].copy()
    path = Path(cfg.memmap) / f"targets_{data}_n{n}_k{cfg.k}_seed{cfg.seed}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(n + cfg.queries, cfg.k))
    DATASETS[data](n + cfg.queries, cfg.k, seed=cfg.seed, out=mm, **kw)
    mm.flush()
    directions = np.array(mm[n:])
    del mm
    return np.load(path, mmap_mode="r")[:n], directions


def _data_depth(cfg: BenchConfig, data: str, n: int) -> int | None:
    """Cluster depth of a clustered data set at N = n (None for unclustered data)."""
    if data not in _CLUSTER_DEPTH:
        return None
    rule = _CLUSTER_DEPTH[data]
    return cluster_depth(cfg.depth if rule is None else rule, n)


def _fraction_logits(counters: dict[str, int], B: int, n: int) -> tuple[float, float]:
    per_query = (int(counters["node_logits"]) + int(counters["target_logits"])) / B
    return per_query, per_query / n


def bench_one(cfg: BenchConfig, data: str, n: int, *, log: Callable[[str], None] = lambda s: None
              ) -> dict[str, Any]:
    """Benchmark one data set at one N; return the JSON record (see the module docstring)."""
    gc.collect()
    st = _proc_status()
    baseline = None if st is None else st["VmRSS"]
    rec: dict[str, Any] = dict(data=data, n=n, load_start=_load(), cluster_depth=_data_depth(cfg, data, n))
    # ---- data and build (traced: tracemalloc counts the points and the tree's allocations)
    tracing_before = tracemalloc.is_tracing()
    if not tracing_before:
        tracemalloc.start()
    t0 = time.perf_counter()
    points, directions = _make_points(cfg, data, n)
    rec["data_seconds"] = time.perf_counter() - t0
    points_bytes = n * cfg.k * 8
    log(f"[bench] {data} N={n}: data {rec['data_seconds']:.1f}s; building (load {_load()})")
    # In RAM the tree keeps the generated array as its points (copy=False): brute force and
    # the tree read the same N x k array, and the process holds two copies, not three.
    build_kw: dict[str, Any] = dict(branching=cfg.branching, leaf_size=cfg.leaf_size, seed=cfg.seed, copy=False)
    storage = None
    if cfg.memmap is not None:  # a disk-backed tree: its N x k arrays are files too (Tree.build's storage)
        storage = Path(cfg.memmap) / f"tree_{data}_n{n}"
        shutil.rmtree(storage, ignore_errors=True)
        build_kw["storage"] = storage
    with _Peak(baseline) as peak:
        t0 = time.perf_counter()
        tree = Tree.build(points, **build_kw)
        build_times = [time.perf_counter() - t0]
    if not tracing_before:
        tracemalloc.stop()
    # Further (untraced) builds while they are cheap: best of up to `repeats`, <= ~30 s in total.
    while len(build_times) < cfg.repeats and sum(build_times) < 30.0:
        del tree
        gc.collect()
        if storage is not None:  # the previous tree's files
            shutil.rmtree(storage, ignore_errors=True)
        t0 = time.perf_counter()
        tree = Tree.build(points, **build_kw)
        build_times.append(time.perf_counter() - t0)
    on_disk = cfg.memmap is not None
    measured = [m for m in (None if on_disk else peak.rss_peak, peak.traced_peak) if m is not None]
    peak_bytes = max(measured) if measured else None
    rec["build"] = dict(
        seconds=min(build_times), runs=build_times, points_bytes=points_bytes, storage=tree.storage,
        peak_rss_bytes=peak.rss_peak, peak_traced_bytes=peak.traced_peak, peak_bytes=peak_bytes,
        memory_budget_bytes=_memory_budget(n, points_bytes), memmap=on_disk,
        n_nodes=int(tree.radius.shape[0]), height=int(tree.depth.max()),
        n_leaves=int(tree.is_leaf.sum()), load=_load(),
    )
    # ---- temperature and queries (the query phase: peak resident memory above the baseline)
    with _Peak(baseline) as query_peak:
        cal = directions[: cfg.calibration_queries]
        unit = make_queries(directions, 1.0)
        t0 = time.perf_counter()
        beta, ppl_cal = calibrate_beta(points, unit[: cfg.calibration_queries], cfg.perplexity)
        rec.update(beta=beta, perplexity_calibration=ppl_cal, calibration_queries=int(cal.shape[0]),
                   calibration_seconds=time.perf_counter() - t0)
        Q = beta * unit
        B = Q.shape[0]
        log(f"[bench] {data} N={n}: build {min(build_times):.1f}s, beta {beta:.4g} (perplexity {ppl_cal:.0f}); "
            f"timing queries (load {_load()})")
        # ---- tree operations and brute force (median of `repeats`; the same random streams each time)
        rec["load_queries"] = _load()
        tree_sample = partial(_tree_sample, tree, cfg.negatives, cfg.seed)
        tree_topk = partial(topk, tree, k=cfg.topk, return_counters=True)
        m_s, why_s, block_s = _queries_to_time(tree_sample, Q, lambda out: out[1], n)
        m_t, why_t, block_t = _queries_to_time(tree_topk, Q, lambda out: out[2], n)
        # Tree and brute force (all queries) in turn, `repeats` times: the same load for both.
        runs = _time_interleaved({
            "tree_sample": partial(tree_sample, Q[:m_s], block=block_s),
            "brute_sample": partial(_brute_sample, points, Q, cfg.negatives, cfg.seed),
            "tree_topk": partial(tree_topk, Q[:m_t], block=block_t),
            "brute_topk": partial(brute_force_topk, points, Q, cfg.topk),
        }, cfg.repeats)
        rec["load_end"] = _load()
        # ---- records and checks on the timed outputs
        s_ids, s_counters = runs["tree_sample"]["out"]
        t_ids, t_logits, t_counters = runs["tree_topk"]["out"]
        b_ids, log_z = runs["brute_sample"]["out"]
        bt_ids, bt_logits = runs["brute_topk"]["out"]
        rec["sample"] = _sample_record(tree, Q[:m_s], n, cfg, s_ids, s_counters, b_ids[:m_s], log_z[:m_s])
        rec["topk"] = _topk_record(tree, Q[:m_t], n, t_ids, t_logits, t_counters, bt_ids[:m_t], bt_logits[:m_t])
        for key, m, why, blk in (("sample", m_s, why_s, block_s), ("topk", m_t, why_t, block_t)):
            tr, br = runs[f"tree_{key}"], runs[f"brute_{key}"]
            rec[key].update(queries_timed=m, queries_limited_by=why, query_block=blk,
                            tree_peak_rss_bytes=tr["peak_rss"],
                            brute_queries=B, brute_peak_rss_bytes=br["peak_rss"],
                            **timing_summary(tr["times"], m, br["times"], B, rec[key]["logits_per_query"], n))
        ppl_q = streamed_perplexity(points, Q)
        rec["perplexity_queries"] = dict(median=float(np.median(ppl_q)), p10=float(np.quantile(ppl_q, 0.1)),
                                         p90=float(np.quantile(ppl_q, 0.9)), mean=float(ppl_q.mean()))
    rec["query_phase"] = dict(peak_rss_bytes=query_peak.rss_peak, memory_budget_bytes=_memory_budget(n, points_bytes))
    del tree, tree_sample, tree_topk, runs
    if storage is not None:  # the disk-backed tree's files (N x k float64, twice) are not kept
        gc.collect()
        shutil.rmtree(storage, ignore_errors=True)
    return rec


def _tree_sample(tree: Tree, n: int, seed: int, Q: np.ndarray, block: int | None = None
                 ) -> tuple[np.ndarray, dict[str, int]]:
    """The timed tree sampler: the same random stream on every repeat."""
    return rejection_sample(tree, Q, n, np.random.default_rng([seed, 1]), block=block)


def _brute_sample(points: np.ndarray, Q: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The timed brute-force sampler: the same random stream on every repeat."""
    return brute_force_sample(points, Q, n, np.random.default_rng([seed, 2]))


def _gathered_logits(points: np.ndarray, Q: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``<q_b, z_{ids[b, i]}>`` for every (b, i)."""
    return np.einsum("bik,bk->bi", np.asarray(points[ids.reshape(-1)]).reshape(*ids.shape, -1), Q)


def _sample_record(tree: Tree, Q: np.ndarray, n: int, cfg: BenchConfig, ids: np.ndarray,
                   counters: dict[str, int], b_ids: np.ndarray, log_z: np.ndarray) -> dict[str, Any]:
    """Counters and checks of the tree's samples ``ids`` against the brute-force ones ``b_ids``."""
    B = Q.shape[0]
    per_query, frac = _fraction_logits(counters, B, n)
    valid = bool(ids.shape == (B, cfg.negatives) and ids.dtype.kind == "i" and ids.min() >= 0 and ids.max() < n)
    # Both samplers are exact: the mean of log P(y) over their draws differs by noise only.
    lp_t = (_gathered_logits(tree.points, Q, ids) - log_z[:, None]).ravel() if valid else np.zeros(1)
    lp_b = (_gathered_logits(tree.points, Q, b_ids) - log_z[:, None]).ravel()
    se = math.sqrt(lp_t.var() / lp_t.size + lp_b.var() / lp_b.size)
    z = float((lp_t.mean() - lp_b.mean()) / se) if se > 0 else 0.0
    return dict(
        logits_per_query=per_query, fraction=frac, counters={key: int(v) for key, v in counters.items()},
        acceptance=counters["accepted"] / max(counters["proposals"], 1),
        ids_valid=valid, mean_log_p_tree=float(lp_t.mean()), mean_log_p_brute=float(lp_b.mean()), z=z,
        # |z| > 5 would be a false alarm with probability ~6e-7 if both are exact.
        distribution_ok=bool(abs(z) <= 5.0),
    )


def _topk_record(tree: Tree, Q: np.ndarray, n: int, ids: np.ndarray, logits: np.ndarray,
                 counters: dict[str, int], b_ids: np.ndarray, b_logits: np.ndarray) -> dict[str, Any]:
    """Counters of the tree's top-k and its agreement with the brute-force top-k."""
    B = Q.shape[0]
    per_query, frac = _fraction_logits(counters, B, n)
    rows_equal = int(np.all(ids == b_ids, axis=1).sum())
    # Rows that differ only among targets whose logits tie up to rounding (the two sides
    # compute <q, z> by different BLAS kernels: relative rounding ~ k * 1e-16) still agree.
    scale = np.linalg.norm(Q, axis=1)[:, None] * np.linalg.norm(tree.points[b_ids], axis=2)
    same_values = np.abs(logits - b_logits) <= 1e-9 * (1.0 + scale)
    recomputed = np.abs(_gathered_logits(tree.points, Q, ids) - logits) <= 1e-9 * (1.0 + scale)
    agree = bool(np.all(same_values) and np.all(recomputed))
    return dict(
        logits_per_query=per_query, fraction=frac, counters={key: int(v) for key, v in counters.items()},
        rows_equal=rows_equal, rows=B, agree=agree,
    )


# --------------------------------------------------------------------------
# The whole run, the fits, the targets and the report
# --------------------------------------------------------------------------

def _fit_exponent(ns: Sequence[int], ys: Sequence[float]) -> float | None:
    """Least-squares slope of log y against log N (None with fewer than two sizes)."""
    if len(ns) < 2:
        return None
    return float(np.polyfit(np.log(np.asarray(ns, float)), np.log(np.asarray(ys, float)), 1)[0])


def _targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The target rows, for each clustered data set at its largest N: ``TARGETS`` (with the isotropic
    rows, for ``clustered``), or ``TARGETS_LARGE`` where that N is at least ``LARGE_N``."""
    iso = [r for r in result["runs"] if r["data"] == "isotropic"]
    last_iso = max(iso, key=lambda r: r["n"]) if iso else None
    rows = []
    for data in _CLUSTER_DEPTH:
        runs = [r for r in result["runs"] if r["data"] == data]
        if not runs:
            continue
        last = max(runs, key=lambda r: r["n"])
        large = last["n"] >= LARGE_N
        table = TARGETS_LARGE if large else TARGETS
        if data != "clustered" and not large:
            continue  # the 1e6 targets are stated for the default clustered data only
        fits = result["fits"][data]
        b, qp = last["build"], last["query_phase"]
        measured = dict(
            sample_speedup=last["sample"]["speedup"], topk_speedup=last["topk"]["speedup"],
            sample_fraction=last["sample"]["fraction"], topk_fraction=last["topk"]["fraction"],
            sample_logit_cost=last["sample"]["logit_cost_ratio"], topk_logit_cost=last["topk"]["logit_cost_ratio"],
            isotropic_sample_time=None if last_iso is None else 1.0 / last_iso["sample"]["speedup"],
            isotropic_topk_time=None if last_iso is None else 1.0 / last_iso["topk"]["speedup"],
            build_seconds=b["seconds"],
            build_memory=None if b["peak_bytes"] is None else b["peak_bytes"] / b["memory_budget_bytes"],
            query_memory=(None if qp["peak_rss_bytes"] is None or b["memmap"]
                          else qp["peak_rss_bytes"] / qp["memory_budget_bytes"]),
            sample_exponent=fits["sample"], topk_exponent=fits["topk"],
        )
        for name, (desc, cmp, thr) in table.items():
            m = measured[name]
            if m is None:
                status = "N/A"
            else:
                status = "PASS" if (m >= thr if cmp == ">=" else m <= thr) else "MISS"
            on = last_iso if name.startswith("isotropic_") else last
            rows.append(dict(name=name, description=desc, comparison=cmp, threshold=thr, measured=m,
                             status=status, n=None if on is None else on["n"],
                             data="isotropic" if name.startswith("isotropic_") else data,
                             table=data, target_n=LARGE_N if large else TARGET_N))
    return rows


def run_bench(cfg: BenchConfig, *, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the benchmark described by ``cfg``; return the JSON-ready result.

    Parameters
    ----------
    cfg : BenchConfig
    log : callable, optional
        Receives one progress line per phase (the CLI prints them to stderr).

    Returns
    -------
    dict
        ``config``, ``machine`` (CPUs, versions, load averages), ``runs`` (one
        record per data set and N: ``build``, ``sample``, ``topk``, ``beta``,
        perplexities), ``fits`` (exponents of logits per query against N),
        ``targets`` (measured figure, threshold, PASS / MISS) and ``verified``
        (every top-k agreed with brute force and every sampled id was valid).
    """
    cfg = cfg.validated()
    if cfg.memmap is not None:
        Path(cfg.memmap).mkdir(parents=True, exist_ok=True)
    machine = _machine()
    machine["load_start"] = _load()
    t0 = time.perf_counter()
    runs = []
    for data in cfg.data:
        for n in cfg.sizes:
            runs.append(bench_one(cfg, data, n, log=log))
    machine["load_end"] = _load()
    fits = {}
    for data in cfg.data:
        rr = [r for r in runs if r["data"] == data]
        ns = [r["n"] for r in rr]
        fits[data] = {op: _fit_exponent(ns, [r[op]["logits_per_query"] for r in rr]) for op in ("sample", "topk")}
        fits[data].update({f"{op}_seconds": _fit_exponent(ns, [r[op]["tree_per_query"] for r in rr])
                           for op in ("sample", "topk")})
        big = [r for r in rr if r["n"] >= FIT_FROM_N]
        if len(big) >= 2 and len(big) < len(rr):  # also over the larger sizes alone (1e5 to 2e7 in the preset)
            fits[data]["from_n"] = dict(n_min=FIT_FROM_N, **{
                op: _fit_exponent([r["n"] for r in big], [r[op]["logits_per_query"] for r in big])
                for op in ("sample", "topk")})
    result = dict(config=asdict(cfg), machine=machine, seconds=time.perf_counter() - t0, runs=runs, fits=fits)
    result["targets"] = _targets(result)
    result["target_n"] = TARGET_N
    result["verified"] = bool(all(r["topk"]["agree"] and r["sample"]["ids_valid"] for r in runs))
    result["distribution_ok"] = bool(all(r["sample"]["distribution_ok"] for r in runs))
    return result


def _fmt_bytes(b: int | None) -> str:
    return "-" if b is None else f"{b / _MIB:,.0f}"


def _fmt_measured(name: str, m: float | None) -> str:
    if m is None:
        return "n/a"
    if name.endswith(("speedup", "_cost", "_time")):
        return f"{m:.2f}x"
    if name.endswith("fraction"):
        return f"{100 * m:.3f}%"
    if name == "build_seconds":
        return f"{m:.1f} s"
    return f"{m:.3f}"


def format_report(result: dict[str, Any]) -> str:
    """The human-readable table of a :func:`run_bench` result."""
    cfg, mach = result["config"], result["machine"]
    lines = [
        f"bench: k={cfg['k']}  queries={cfg['queries']}  negatives={cfg['negatives']}  top-{cfg['topk']}  "
        f"perplexity target {cfg['perplexity']:g}  repeats={cfg['repeats']} (interleaved; median [min-max])  "
        f"seed={cfg['seed']}  "
        f"tree branching={cfg['branching']} leaf_size={cfg['leaf_size']}  cluster depth {cfg['depth']}"
        + (f"  memmap={cfg['memmap']}" if cfg["memmap"] else ""),
        f"machine: {mach.get('processor', 'unknown')}, {mach['cpus']} CPUs"
        + ("" if mach.get("memory_bytes") is None else f", {mach['memory_bytes'] / _GIB:.1f} GiB")
        + f", load average {mach['load_start']} at start, {mach['load_end']} at end"
        + (f", {mach['thread_env']}" if mach["thread_env"] else "") + f"; numpy {mach['numpy']}",
        "storage: " + (f"disk-backed (--memmap {cfg['memmap']}: targets in a .npy file, the tree's two N x k "
                       "arrays in files; memory figures are tracemalloc's)" if cfg["memmap"] else
                       "in RAM (the tree keeps the generated targets as its points: two N x k float64 "
                       "arrays, the points and their depth-first copy; memory figures are peak resident "
                       "memory above the process's size before the data)"),
    ]
    for data in cfg["data"]:
        rr = [r for r in result["runs"] if r["data"] == data]
        what = ("make_isotropic" if data == "isotropic" else
                "make_targets, cluster depth " + "/".join(str(r["cluster_depth"]) for r in rr))
        lines += ["", f"== {data} ==  ({what})",
                  f"{'N':>9} {'beta':>8} {'ppl cal':>7} {'ppl q10/50/90':>15} {'build s':>8} {'peak MiB':>9} "
                  f"{'(x pts)':>7} {'query MiB':>9} {'(x pts)':>7} {'nodes':>8} {'height':>6} {'load':>5}"]
        for r in rr:
            b, pq, qp = r["build"], r["perplexity_queries"], r["query_phase"]
            ratio = "-" if b["peak_bytes"] is None else f"{b['peak_bytes'] / b['points_bytes']:.2f}"
            q_ratio = "-" if qp["peak_rss_bytes"] is None else f"{qp['peak_rss_bytes'] / b['points_bytes']:.2f}"
            lines.append(
                f"{r['n']:>9} {r['beta']:>8.4g} {r['perplexity_calibration']:>7.0f} "
                f"{pq['p10']:>5.0f}/{pq['median']:>4.0f}/{pq['p90']:>4.0f} {b['seconds']:>8.2f} "
                f"{_fmt_bytes(b['peak_bytes']):>9} {ratio:>7} {_fmt_bytes(qp['peak_rss_bytes']):>9} {q_ratio:>7} "
                f"{b['n_nodes']:>8} {b['height']:>6} {b['load']!s:>5}")
        lines.append(f"{'N':>9} {'op':<7} {'tree ms/q':>9} {'brute ms/q':>10} {'speed-up':>8} {'[min-max]':>13} "
                     f"{'logits/q':>10} {'% of N':>8} {'ns/logit':>8} {'brute ns':>8} {'ratio':>6} "
                     f"{'[min-max]':>13} {'tree MiB':>8} {'brute MiB':>9}  check")
        for r in rr:
            s, t = r["sample"], r["topk"]
            s_check = (f"ids valid: {'yes' if s['ids_valid'] else 'NO'}; mean log P tree {s['mean_log_p_tree']:.3f} "
                       f"vs brute {s['mean_log_p_brute']:.3f} (z = {s['z']:+.1f}); acceptance {s['acceptance']:.2f}")
            t_check = (f"top-{cfg['topk']} == brute force: {t['rows_equal']}/{t['rows']} rows identical, "
                       f"{'agree' if t['agree'] else 'DISAGREE'}")
            for op, o, chk in (("sample", s, s_check), (f"top-{cfg['topk']}", t, t_check)):
                sub = ("" if o["queries_limited_by"] is None else
                       f" [tree timed on {o['queries_timed']} of {o['brute_queries']} queries "
                       f"({o['queries_limited_by']})]")
                if o.get("query_block") is not None:
                    sub += f" [tree in blocks of {o['query_block']} queries (memory)]"
                su, cr = o["speedup_range"], o["logit_cost_ratio_range"]
                lines.append(f"{r['n']:>9} {op:<7} {1e3 * o['tree_per_query']:>9.3f} "
                             f"{1e3 * o['brute_per_query']:>10.3f} {o['speedup']:>7.2f}x "
                             f"{f'[{su[0]:.2f}-{su[1]:.2f}]':>13} "
                             f"{o['logits_per_query']:>10.0f} {100 * o['fraction']:>7.3f}% "
                             f"{o['tree_ns_per_logit']:>8.1f} {o['brute_ns_per_logit']:>8.1f} "
                             f"{o['logit_cost_ratio']:>6.2f} {f'[{cr[0]:.2f}-{cr[1]:.2f}]':>13} "
                             f"{_fmt_bytes(o['tree_peak_rss_bytes']):>8} {_fmt_bytes(o['brute_peak_rss_bytes']):>9}  "
                             f"{chk}{sub}")
        f = result["fits"][data]
        if f["sample"] is not None:
            lines.append(f"fit over N: logits per query ~ N^{f['sample']:.2f} (sample), N^{f['topk']:.2f} "
                         f"(top-{cfg['topk']}); tree time per query ~ N^{f['sample_seconds']:.2f} (sample), "
                         f"N^{f['topk_seconds']:.2f} (top-{cfg['topk']})")
        if "from_n" in f:
            lines.append(f"fit over N >= {f['from_n']['n_min']}: logits per query ~ N^{f['from_n']['sample']:.2f} "
                         f"(sample), N^{f['from_n']['topk']:.2f} (top-{cfg['topk']})")
    for table in dict.fromkeys(t["table"] for t in result["targets"]):
        rows = [t for t in result["targets"] if t["table"] == table]
        n = next(t["n"] for t in rows if t["data"] == table)
        target_n = rows[0]["target_n"]
        note = "" if n == target_n else f"  [the targets are stated for N = {target_n:.0e}]"
        iso = [t["n"] for t in rows if t["data"] == "isotropic" and t["n"] is not None]
        where = f"; isotropic ones at N = {iso[0]}" if iso else ""
        expo = "; exponents over all sizes" if any(t["name"].endswith("exponent") for t in rows) else ""
        lines += ["", f"== targets ({table} data, N = {n}{where}{expo}){note} =="]
        for t in rows:
            lines.append(f"  {t['description']:<55} {t['comparison']} {t['threshold']:<6g} "
                         f"measured {_fmt_measured(t['name'], t['measured']):>10}   {t['status']}")
    lines += ["", f"verification: tree top-k == brute-force top-k and sampled ids valid on every run: "
                  f"{'yes' if result['verified'] else 'NO'}; sample means consistent (|z| <= 5): "
                  f"{'yes' if result['distribution_ok'] else 'NO'}; total {result['seconds']:.0f} s"]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def _size(text: str) -> int:
    """Parse a size such as ``10000`` or ``1e6`` (must be an integer >= 2)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 1e5, got {text!r}") from None
    if not math.isfinite(v) or v != int(v) or v < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2 such as 1e5, got {text!r}")
    return int(v)


def _depth(text: str) -> int | str:
    """Parse ``--depth``: a positive integer or ``auto``."""
    if text == "auto":
        return text
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of the ``bench`` command on ``parser``."""
    d = BenchConfig()
    parser.add_argument("--sizes", type=_size, nargs="+", default=None, metavar="N",
                        help="numbers of targets N (default: 1e4 1e5 1e6; with --quick: 1000 3000 10000)")
    parser.add_argument("--data", choices=(*DATASETS, "both"), nargs="+", default=None,
                        help="one or more of: clustered (make_targets with --depth), clustered_auto "
                             "(make_targets with the depth of --depth auto), isotropic (make_isotropic); "
                             "both = clustered isotropic (default: both)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default=None,
                        help="paper-scale: N = 1e4 1e5 1e6 2e7, k = 32, --data clustered clustered_auto, "
                             "200 queries, 3 repeats, and the targets at N = 2e7 (measured: 17 minutes and "
                             "12.1 GiB of RAM at the peak on an idle 2-core machine); options given "
                             "explicitly override it")
    parser.add_argument("--k", type=int, default=None, help=f"index dimension k (default: {d.k})")
    parser.add_argument("--queries", type=int, default=None,
                        help=f"queries timed per N (default: {d.queries}; with --quick: {QUICK['queries']})")
    parser.add_argument("--negatives", type=int, default=d.negatives,
                        help="exact samples per query (default: %(default)s)")
    parser.add_argument("--topk", type=int, default=d.topk, help="k of the exact top-k (default: %(default)s)")
    parser.add_argument("--perplexity", type=float, default=d.perplexity,
                        help="mean softmax perplexity the temperature is calibrated to (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed repeats, tree and brute force interleaved; median and range reported "
                             f"(default: {d.repeats}; with --quick: {QUICK['repeats']})")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of data, tree and samplers (default: 0)")
    parser.add_argument("--branching", type=int, default=d.branching, help="tree branching (default: %(default)s)")
    parser.add_argument("--leaf-size", type=int, default=d.leaf_size, help="tree leaf size (default: %(default)s)")
    parser.add_argument("--depth", type=_depth, default=d.depth,
                        help="levels of cluster centres of the clustered data (make_targets' depth, default 3: "
                             "512 leaf clusters whatever N); 'auto': round(log_8(N / 25)) levels, about 25 "
                             "targets per leaf cluster at every N")
    parser.add_argument("--memmap", type=str, default=None, metavar="DIR",
                        help="write the targets to DIR/*.npy and benchmark from a read-only np.memmap")
    parser.add_argument("--json", type=str, default=None, metavar="PATH",
                        help="write the results as JSON (default: figures/out/bench.json, where the scaling "
                             "figure looks for it; none with --quick; '-' for none)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test of a few seconds")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`BenchConfig` of parsed CLI options (``--quick`` fills unset ones)."""
    d = BenchConfig()
    quick = bool(args.quick)
    preset = PRESETS.get(getattr(args, "preset", None) or "", {})
    if quick and preset:
        raise ValueError("--preset: expected either --quick or --preset, got both")
    if args.data:
        data = tuple(dict.fromkeys(x for name in args.data
                                   for x in (("clustered", "isotropic") if name == "both" else (name,))))
    else:
        data = preset.get("data", ("clustered", "isotropic"))
    return BenchConfig(
        sizes=tuple(args.sizes) if args.sizes else (QUICK["sizes"] if quick else preset.get("sizes", d.sizes)),
        data=data,
        k=args.k if args.k is not None else preset.get("k", d.k),
        queries=(args.queries if args.queries is not None else
                 (QUICK["queries"] if quick else preset.get("queries", d.queries))),
        negatives=args.negatives, topk=args.topk, perplexity=args.perplexity,
        calibration_queries=QUICK["calibration_queries"] if quick else d.calibration_queries,
        repeats=(args.repeats if args.repeats is not None else
                 (QUICK["repeats"] if quick else preset.get("repeats", d.repeats))),
        seed=args.seed, branching=args.branching, leaf_size=args.leaf_size, memmap=args.memmap, quick=quick,
        depth=args.depth,
    )


def run(args: argparse.Namespace) -> int:
    """Run the ``bench`` command: table on stdout, progress on stderr, JSON to ``--json``."""
    cfg = config_from_args(args).validated()
    json_path = args.json if args.json is not None else (None if cfg.quick else "figures/out/bench.json")
    if json_path == "-":
        json_path = None
    if json_path is not None:  # output paths are checked before any work
        check_output_file(json_path, "--json")
    if cfg.memmap is not None:
        check_output_dir(cfg.memmap, "--memmap")
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    result = run_bench(cfg, log=log)
    print(format_report(result))
    if json_path is not None:
        write_json(json_path, result)
        print(f"results written to {json_path}")
    return 0
