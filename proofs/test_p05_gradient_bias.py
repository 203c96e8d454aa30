"""P5 (proofs/README.md section 6): ||E_Phat[h] - E_P[h]|| <= 2 TV(Phat, P) H; grad_q log Z = E_P[z_y].

Proof: ``proofs/p05_gradient_bias.md``.

Tolerances: expectations are sums of <= 120 terms of size <= the norms
involved, exact in float64 to ~1e-14 of them; we allow 1e-9 (proofs/README.md section 6)
of (1 + H). Finite differences (step h = 1e-4 / max ||z||): truncation
h^2 max||z||^3 / 6 plus rounding ~1e-16 |log Z| / h, below 1e-6 max ||z||.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from proofs.strategies_bounds import (
    brute_log_p,
    brute_log_z,
    line_pair_tree,
    random_cut,
    seeds,
    trees_with_queries,
)
from reference.bounds import Cut, cut_distribution, grad_bias_bound, tv_bound

RTOL = 1e-9


def _expectations(tree, q, cut):
    live = np.flatnonzero(tree.alive)
    phat = np.exp(cut_distribution(tree, q, cut)[live])
    p = np.exp(brute_log_p(tree, q)[live])
    return live, phat, p


@given(trees_with_queries(n_queries=2, scales=(0.0, 1.0, 10.0, 60.0)), st.integers(0, 60))
def test_p5_gradient_of_log_z(data, n_expand):
    """h(y) = z_y: ||E_Phat[z] - E_P[z]|| <= 2 TV H <= grad_bias_bound (c = r_root, H = rho_root)."""
    tree, Q, seed = data
    rng = np.random.default_rng(seed)
    for q in Q:
        cut = random_cut(tree, rng, int(rng.integers(0, n_expand + 1)))
        live, phat, p = _expectations(tree, q, cut)
        z = tree.points[live]
        bias = np.linalg.norm((phat - p) @ z)
        H = float(np.linalg.norm(z - tree.rep[0], axis=1).max())
        assert H <= tree.radius[0] * (1 + 1e-12) + 1e-300, "I3 at the root"
        tv = 0.5 * np.abs(phat - p).sum()
        tol = RTOL * (1.0 + H)
        assert bias <= 2 * tv * H + tol, (bias, 2 * tv * H)
        bound = grad_bias_bound(tree, q, cut)
        np.testing.assert_allclose(bound, 2 * tv_bound(tree, q, cut) * tree.radius[0], rtol=1e-15)
        assert bias <= bound + tol, (bias, bound)


@given(trees_with_queries(n_queries=1), st.integers(0, 60), st.integers(1, 4), seeds)
def test_p5_any_bounded_function(data, n_expand, m, seed_h):
    """Random h: Y -> R^m and c: ||E_Phat[h] - E_P[h]|| <= 2 TV H and <= grad_bias_bound(H=H)."""
    tree, Q, seed = data
    rng = np.random.default_rng(seed)
    cut = random_cut(tree, rng, n_expand)
    live, phat, p = _expectations(tree, Q[0], cut)
    hr = np.random.default_rng(seed_h)
    h = hr.normal(size=(live.size, m)) * 10.0 ** hr.uniform(-2, 2)
    c = hr.normal(size=m)
    H = float(np.linalg.norm(h - c, axis=1).max())
    bias = np.linalg.norm((phat - p) @ h)
    tv = 0.5 * np.abs(phat - p).sum()
    tol = RTOL * (1.0 + H)
    assert bias <= 2 * tv * H + tol
    assert bias <= grad_bias_bound(tree, Q[0], cut, H=H) + tol


@given(trees_with_queries(n_queries=1, scales=(0.5, 5.0, 30.0), kinds=("uniform", "clustered", "collinear", "grid")))
def test_grad_log_z_is_expected_target(data):
    """grad_q log Z = E_P[z_y], by central finite differences of the brute-force log Z."""
    tree, Q, _ = data
    q = Q[0]
    live = np.flatnonzero(tree.alive)
    z = tree.points[live]
    zmax = max(float(np.linalg.norm(z, axis=1).max()), 1e-12)
    grad = np.exp(brute_log_p(tree, q)[live]) @ z
    h = 1e-4 / zmax
    fd = np.array([(brute_log_z(tree, q + h * e) - brute_log_z(tree, q - h * e)) / (2 * h)
                   for e in np.eye(tree.dim)])
    np.testing.assert_allclose(fd, grad, rtol=0, atol=1e-6 * zmax)


def test_p5_line_pair_equality():
    """{-1, +1}, root cut, c = 0, H = 1: the bias is exactly 2 TV H (the bound is attained)."""
    tree = line_pair_tree()
    q = np.array([0.7])
    live, phat, p = _expectations(tree, q, Cut.root())
    bias = abs((phat - p) @ tree.points[live, 0])
    tv = 0.5 * np.abs(phat - p).sum()
    np.testing.assert_allclose(bias, 2 * tv * 1.0, rtol=1e-14)
    assert bias <= grad_bias_bound(tree, q, Cut.root())
