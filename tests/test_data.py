"""Tests for reference/data.py: seeded synthetic retrieval datasets (proofs/README.md section 7)."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from reference.data import RetrievalData, make_dataset, make_isotropic, make_targets


def _nn_recall(X: np.ndarray, Y: np.ndarray, pos: np.ndarray) -> float:
    """Recall@1 of Euclidean nearest neighbour of each row of X among the rows of Y."""
    d2 = (X**2).sum(1)[:, None] - 2.0 * X @ Y.T + (Y**2).sum(1)[None, :]
    return float(np.mean(np.argmin(d2, axis=1) == pos))


# ---------------------------------------------------------------------------
# determinism, shapes, dtypes


def test_targets_deterministic_for_a_seed() -> None:
    a = make_targets(500, 16, seed=7)
    assert_array_equal(a, make_targets(500, 16, seed=7))
    assert_array_equal(a, make_targets(500, 16, rng=np.random.default_rng(7)))
    assert_array_equal(a, make_targets(500, 16, seed=np.random.default_rng(7)))
    assert not np.array_equal(a, make_targets(500, 16, seed=8))
    assert_array_equal(make_targets(10, 4), make_targets(10, 4, seed=0))  # default seed 0
    assert_array_equal(make_isotropic(300, 5, seed=2), make_isotropic(300, 5, seed=2))
    assert not np.array_equal(make_isotropic(300, 5, seed=2), make_isotropic(300, 5, seed=3))


def test_float32_is_the_float64_data_rounded() -> None:
    """Random numbers are drawn in float64 whatever the dtype (chunked; > 1 chunk here)."""
    y64 = make_targets(70_000, 3, seed=1)
    y32 = make_targets(70_000, 3, seed=1, dtype=np.float32)
    assert y64.dtype == np.float64 and y32.dtype == np.float32
    assert_array_equal(y32, y64.astype(np.float32))
    assert_array_equal(make_isotropic(100, 3, dtype="float32"), make_isotropic(100, 3).astype(np.float32))
    d64, d32 = make_dataset(200, dim=8, seed=4), make_dataset(200, dim=8, seed=4, dtype=np.float32)
    for name in ("targets", "train_x", "test_x"):
        assert getattr(d32, name).dtype == np.float32
        assert_array_equal(getattr(d32, name), getattr(d64, name).astype(np.float32))
    assert_array_equal(d32.train_pos, d64.train_pos)


def test_dataset_shapes_split_and_labels() -> None:
    N, qpt = 300, 4
    d = make_dataset(N, dim=12, query_dim=9, queries_per_target=qpt, test_fraction=0.25, depth=2, branching=5, seed=3)
    assert isinstance(d, RetrievalData) and d.n_targets == N
    assert d.targets.shape == (N, 12)
    n_test = round(0.25 * N * qpt)
    assert d.test_x.shape == (n_test, 9) and d.test_pos.shape == (n_test,)
    assert d.train_x.shape == (N * qpt - n_test, 9) and d.train_pos.shape == (N * qpt - n_test,)
    assert d.train_pos.dtype == np.int64 and d.test_pos.dtype == np.int64
    # Every target has exactly qpt queries across the two splits; test targets are among the N.
    all_pos = np.concatenate([d.train_pos, d.test_pos])
    assert_array_equal(np.bincount(all_pos, minlength=N), np.full(N, qpt))
    assert d.test_pos.min() >= 0 and d.test_pos.max() < N
    # Cluster labels: level l in [0, b^(l+1)), each the parent of the next level's label.
    assert d.clusters.shape == (N, 2) and d.clusters.dtype == np.int64
    assert d.clusters[:, 0].max() < 5 and d.clusters[:, 1].max() < 25
    assert_array_equal(d.clusters[:, 0], d.clusters[:, 1] // 5)
    # 300 targets over 25 leaves: every label of every level is used (P(miss) < 25 * 0.96^300 ~ 1e-4;
    # fixed seed).
    assert np.unique(d.clusters[:, 0]).size == 5 and np.unique(d.clusters[:, 1]).size == 25
    assert d.config["n_train"] + d.config["n_test"] == N * qpt
    assert d.config["query_dim"] == 9 and d.config["noise_std"] > 0
    # The split is a shuffle: not simply the first / last queries.
    assert not np.array_equal(np.sort(d.test_pos), d.test_pos)


# ---------------------------------------------------------------------------
# cluster structure


def test_hierarchical_cluster_structure_is_visible() -> None:
    """Mean squared distance grows with the level at which two targets' paths split.

    Expected E||y - y'||^2 when the deepest shared centre is at level l
    (l = depth: same leaf; l = 0: different top-level centres):
    2 * sum_{j=l}^{depth} spread^(2 j). Checked in order (strictly increasing)
    and within 25% of the formula (the top-level term averages over only
    branching = 8 random centres, whose pair distances scatter by ~20%).
    """
    depth, b, spread = 3, 8, 0.5
    y, lab = make_targets(3000, 64, depth=depth, branching=b, spread=spread, seed=11, return_clusters=True)
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, 3000, size=(2, 400_000))
    keep = i != j
    i, j = i[keep], j[keep]
    d2 = np.sum((y[i] - y[j]) ** 2, axis=1)
    shared = (lab[i] == lab[j]).sum(axis=1)  # number of shared levels = level of the deepest shared centre
    means = np.array([d2[shared == s].mean() for s in range(depth + 1)])
    expected = np.array([2 * np.sum(spread ** (2 * np.arange(s, depth + 1))) for s in range(depth + 1)])
    assert np.all(np.diff(means) < 0), f"mean squared distance by shared levels: {means}"
    assert np.all(np.abs(means / expected - 1) < 0.25), f"{means} vs expected {expected}"
    # Within-leaf-cluster distances are smaller than between-cluster ones, pair by pair
    # on average and at the 90th percentile.
    assert np.quantile(d2[shared == depth], 0.9) < np.quantile(d2[shared < depth], 0.1)


def test_isotropic_moments() -> None:
    """y ~ N(0, I/dim): E||y||^2 = 1 (sd of the mean over 1e5 rows ~ 1e-3 for dim 16)."""
    y = make_isotropic(100_000, 16, seed=5)
    assert abs(np.mean(np.sum(y**2, axis=1)) - 1.0) < 0.01
    assert np.all(np.abs(y.mean(axis=0)) < 0.005)  # sd 1/sqrt(16 * 1e5) = 8e-4 per coordinate


# ---------------------------------------------------------------------------
# the retrieval task: learnable, not trivial


def test_retrieval_task_is_learnable_but_not_trivial() -> None:
    """Measured at the defaults with N = 1000, seed 0 (chance recall@1 = 0.001).

    - the clean query map is injective on the targets (noise = 0: the nearest
      clean query recovers every target), so the task is well posed;
    - with the default noise even the *true* map does not give perfect
      recall@1 (measured 0.947): cluster-mates are genuinely hard negatives;
    - the raw features do not solve it: the nearest target to the raw query is
      at chance (measured 0.002);
    - the map is genuinely non-linear: least squares x -> y then nearest
      target gives 0.313, ridge regression on 1024 random Fourier features of
      x gives 0.478; a smooth non-linear model (such as the MLP dual encoder of
      ``reference.demo``) learns it.
    Thresholds sit well inside those measurements (they are fixed-seed numbers).
    """
    d = make_dataset(1000, seed=0)
    # Same seed, noise = 0: identical random stream, so these are the clean queries.
    c = make_dataset(1000, seed=0, noise=0.0)
    assert_array_equal(c.test_pos, d.test_pos)
    clean = np.empty((1000, c.train_x.shape[1]))
    clean[c.train_pos], clean[c.test_pos] = c.train_x, c.test_x
    assert _nn_recall(clean, clean, np.arange(1000)) == 1.0
    oracle = _nn_recall(d.test_x, clean, d.test_pos)
    assert 0.5 < oracle < 0.99, oracle
    assert _nn_recall(d.test_x, d.targets, d.test_pos) < 0.05

    def with_bias(x: np.ndarray) -> np.ndarray:
        return np.c_[x, np.ones(len(x))]

    lin = np.linalg.lstsq(with_bias(d.train_x), d.targets[d.train_pos], rcond=None)[0]
    linear = _nn_recall(with_bias(d.test_x) @ lin, d.targets, d.test_pos)

    rng = np.random.default_rng(0)
    mu, sd = d.train_x.mean(0), d.train_x.std(0)
    W = rng.standard_normal((d.train_x.shape[1], 1024)) * (0.7 / np.sqrt(d.train_x.shape[1]))
    phase = rng.uniform(-np.pi, np.pi, 1024)

    def features(x: np.ndarray) -> np.ndarray:
        return np.cos(((x - mu) / sd) @ W + phase)

    F = features(d.train_x)
    coef = np.linalg.solve(F.T @ F + np.eye(1024), F.T @ d.targets[d.train_pos])
    learned = _nn_recall(features(d.test_x) @ coef, d.targets, d.test_pos)
    assert learned > 0.3, learned  # 300x chance
    assert learned > linear + 0.1, (learned, linear)  # non-linearity matters
    assert learned < oracle  # and no better than the true map


# ---------------------------------------------------------------------------
# scale


def test_one_million_targets_fast_and_memory_proportional() -> None:
    """1e6 x 32 float32 targets: ~1 s, peak traced memory < 2x the output (128 MB).

    A (N x clusters) temporary would be 1e6 x 512 x 8 B = 4 GB; the chunked
    generator holds one 64k-row float64 block plus the (N,) leaf ids.
    The 30 s limit is loose on purpose (shared CI cores); it catches
    accidentally quadratic code, not micro-regressions.
    """
    tracemalloc.start()
    try:  # never leave tracing on: it slows every later test (and every forked mutant) about 5-fold
        t0 = time.perf_counter()
        y = make_targets(1_000_000, 32, dtype=np.float32)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert y.shape == (1_000_000, 32) and y.dtype == np.float32
    assert np.isfinite(y).all()
    assert elapsed < 30.0, elapsed
    assert peak < 2 * y.nbytes, (peak, y.nbytes)


# ---------------------------------------------------------------------------
# bad inputs

bad_cases = [
    (lambda: make_targets(0, 4), "n: expected an integer >= 1"),
    (lambda: make_targets(10.0, 4), "n: expected an integer"),
    (lambda: make_targets(10, 0), "dim"),
    (lambda: make_targets(10, 4, depth=0), "depth"),
    (lambda: make_targets(10, 4, branching=0), "branching"),
    (lambda: make_targets(10, 4, spread=0.0), "spread"),
    (lambda: make_targets(10, 4, spread=float("nan")), "spread"),
    (lambda: make_targets(10, 4, depth=12, branching=8), "branching\\*\\*depth"),
    (lambda: make_targets(10, 4, dtype=np.int32), "dtype"),
    (lambda: make_targets(10, 4, dtype="float16"), "dtype"),
    (lambda: make_targets(10, 4, dtype="no such dtype"), "dtype"),
    (lambda: make_targets(10, 4, seed=-1), "seed"),
    (lambda: make_targets(10, 4, seed=1.5), "seed"),
    (lambda: make_targets(10, 4, seed="0"), "seed"),
    (lambda: make_targets(10, 4, seed=1, rng=np.random.default_rng(1)), "at most one"),
    (lambda: make_isotropic(-3, 4), "n"),
    (lambda: make_isotropic(3, 4, seed=np.random.RandomState(0)), "seed"),
    (lambda: make_dataset(0), "n_targets"),
    (lambda: make_dataset(10, query_dim=0), "query_dim"),
    (lambda: make_dataset(10, queries_per_target=0), "queries_per_target"),
    (lambda: make_dataset(10, test_fraction=0.0), "test_fraction"),
    (lambda: make_dataset(10, test_fraction=1.0), "test_fraction"),
    (lambda: make_dataset(10, test_fraction=1.5), "test_fraction"),
    (lambda: make_dataset(1, queries_per_target=1), "empty split"),
    (lambda: make_dataset(10, noise=-0.1), "noise"),
    (lambda: make_dataset(10, noise=float("inf")), "noise"),
]


@pytest.mark.parametrize("call, match", bad_cases, ids=[str(i) for i in range(len(bad_cases))])
def test_bad_arguments_raise_value_error(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
