"""The certified bracket is literally true in float64: lo <= log Z <= hi against exact arithmetic.

proofs/p02_bracket.md, section "Floating point": ``log_partition_bracket``
widens the computed ``lo`` down and ``hi`` up by a
derived bound ``W`` on every rounding error (inner products, ``||q||``, the
stored radii, additions, ``exp``/``log``, the sum), then step one float
further out. These tests check the result against the *exact* ``log Z`` of
the float64 inputs, with no tolerance:

- the logits ``a_y = <q, z_y>`` are computed exactly, in rationals
  (:class:`fractions.Fraction`: every float64 is a rational number);
- ``log Z = m + log sum_y exp(a_y - m)`` (``m`` the exact largest logit) is
  enclosed in ``[m + L - delta, m + L + delta]``, where ``L`` is computed in
  80-bit extended precision (``np.longdouble``, 64-bit significand) from the
  exactly rounded differences ``a_y - m``, and ``delta`` bounds its error
  (argument rounding, ``expl`` and ``logl`` within 4 ulp, the sum); the
  enclosure is some 1e-17 wide, a thousand times below float64 rounding;
- ``lo <= m + L - delta`` and ``m + L + delta <= hi`` are compared as exact
  rationals.

Without the widening the same comparison fails (the issue's finding: lo above
log Z by up to ~1.7e-16 x scale, hi below by up to ~2.2e-16 x scale), which
:func:`test_unwidened_bracket_is_not_certified` checks, so the oracle can
tell. The cases are small random trees and adversarial ones: logit scale up to
1e4, nearly equal logits (near-duplicate points), cancellation (large
coordinates whose products cancel), and trees after update / insert / delete
(radii enlarged one by one, not nested).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from proofs.strategies_bounds import random_cut
from reference import _fastpath, plain
from reference.bounds import Cut, adaptive_cut, cut_eps, log_partition_bracket, validate_cut
from reference.dynamic import DynamicIndex
from reference.tree import Tree

LD = np.longdouble
pytestmark = pytest.mark.skipif(np.finfo(LD).nmant < 63,
                                reason="needs 80-bit (or wider) np.longdouble for the exact log Z enclosure")


# --------------------------------------------------------------------------- the exact oracle

def _to_ld(x: Fraction) -> np.longdouble:
    """``x`` truncated to a 64-bit significand (relative error < 2^-63), as np.longdouble."""
    if x == 0:
        return LD(0)
    num, den = abs(x.numerator), x.denominator
    shift = 63 - (num.bit_length() - den.bit_length())
    mant = (num << shift) // den if shift >= 0 else num // (den << -shift)
    while mant >= 1 << 64:
        mant >>= 1
        shift -= 1
    v = np.ldexp(LD(int(mant)), -shift)
    return -v if x < 0 else v


def _frac(x) -> Fraction:
    return Fraction(*x.as_integer_ratio())


def exact_logits(Q: np.ndarray, Z: np.ndarray) -> list[list[Fraction]]:
    """``<q, z_y>`` in exact rational arithmetic, per query and target."""
    Zf = [[Fraction(float(v)) for v in z] for z in Z]
    out = []
    for q in np.atleast_2d(Q):
        qf = [Fraction(float(v)) for v in q]
        out.append([sum((a * b for a, b in zip(qf, z)), Fraction(0)) for z in Zf])
    return out


def log_z_enclosure(Q: np.ndarray, Z: np.ndarray) -> list[tuple[Fraction, Fraction]]:
    """``(lower, upper)`` rationals with ``lower <= log sum_y exp(<q, z_y>) <= upper``, per query.

    ``m`` = the exact largest logit; ``d_y = a_y - m <= 0`` exact, truncated to
    longdouble (error < 2^-62 |d_y|); ``S = sum expl(d_y)`` (each within 4 ulp,
    2^-61 relative, of exp at its argument; the sum within N 2^-62 of S; an
    underflowed term contributes less than e^-11000); ``L = logl(S)`` within
    2^-61 |L|. So ``|L - log S_exact| <= delta`` with the ``delta`` below (a
    factor 2 on top of the first-order bounds).
    """
    out = []
    for a in exact_logits(Q, Z):
        m = max(a)
        d = np.array([_to_ld(ai - m) for ai in a], dtype=LD)
        e = np.exp(d)
        S = np.sum(e)
        n = LD(len(a))
        err_s = (np.sum(LD(2) * e * (np.abs(d) + LD(1))) * LD(2.0**-61) + n * LD(2.0**-62) * S
                 + n * np.exp(LD(-11000)))
        L = np.log(S)
        delta = LD(2) * (LD(1.01) * err_s / S + abs(L) * LD(2.0**-61))
        out.append((m + _frac(L) - _frac(delta), m + _frac(L) + _frac(delta)))
    return out


def violations(lo, hi, enclosure) -> tuple[int, int]:
    """Numbers of queries with lo above log Z and with hi below log Z (exact rational comparisons)."""
    lo, hi = np.atleast_1d(lo), np.atleast_1d(hi)
    above = sum(Fraction(float(lo[b])) > enclosure[b][0] for b in range(lo.size))
    below = sum(Fraction(float(hi[b])) < enclosure[b][1] for b in range(hi.size))
    return above, below


def unwidened_bracket(tree: Tree, Q: np.ndarray, cut: Cut) -> tuple[np.ndarray, np.ndarray]:
    """The bracket as computed before the widening: logsumexp of the float64 entry terms."""
    t = _fastpath.terms(tree, Q, cut.query, cut.node, cut.target)
    lo, hi, _ = t.bracket(cut.ptr)
    return lo, hi


# --------------------------------------------------------------------------- cases

KINDS = ("random", "near_duplicates", "cancellation", "grid", "dynamic")


def _points(kind: str, rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    if kind == "near_duplicates":  # nearly equal logits
        return rng.normal(size=k) * 10 + 1e-9 * rng.normal(size=(n, k))
    if kind == "cancellation":  # a large common offset: <q, z> cancels for q with sum(q) ~ 0
        return 1e3 * np.ones(k) + rng.normal(size=(n, k))
    if kind == "grid":
        return rng.integers(-3, 4, size=(n, k)).astype(np.float64) / 3.0
    return rng.normal(size=(n, k)) * 10.0 ** rng.uniform(-3, 3)


def _queries(kind: str, rng: np.random.Generator, tree: Tree, B: int, logit_scale: float) -> np.ndarray:
    Q = rng.normal(size=(B, tree.dim))
    if kind == "cancellation" and tree.dim > 1:
        Q -= Q.mean(axis=1, keepdims=True)  # orthogonal to the offset (up to rounding)
    zmax = float(np.linalg.norm(tree.points[tree.alive], axis=1).max())
    return Q * logit_scale / (np.linalg.norm(Q, axis=1, keepdims=True) * max(zmax, 1e-300))


def make_case(seed: int) -> tuple[Tree, np.ndarray, str]:
    rng = np.random.default_rng(seed)
    kind = KINDS[seed % len(KINDS)]
    n, k = int(rng.integers(2, 26)), int(rng.integers(1, 7))
    tree = Tree.build(_points(kind, rng, n, k), branching=int(rng.integers(2, 4)),
                      leaf_size=int(rng.integers(1, 5)), seed=seed)
    if kind == "dynamic":  # radii enlarged one target at a time, nodes emptied: not nested
        ids = rng.choice(n, size=max(1, n // 3), replace=False)
        tree.update(ids, tree.points[ids] + rng.normal(scale=0.5, size=(ids.size, k)))
        tree.insert(rng.normal(size=(3, k)))
        live = np.flatnonzero(tree.alive)
        tree.delete(rng.choice(live, size=live.size // 4, replace=False))
    scale = 1e4 if seed % 3 == 0 else float(10.0 ** rng.uniform(-1, 4))
    return tree, _queries(kind, rng, tree, 3, scale), kind


def cuts_of(tree: Tree, Q: np.ndarray, rng: np.random.Generator) -> list[Cut]:
    """The root cut, random cuts, and adaptive cuts (tol 1e-12: exhausted, lo = hi before widening)."""
    B = Q.shape[0]
    return [Cut.root(B), Cut.stack([random_cut(tree, rng, int(rng.integers(1, 30))) for _ in range(B)]),
            adaptive_cut(tree, Q, 0.5), adaptive_cut(tree, Q, 1e-12)]


SEEDS = range(150)


@pytest.fixture(scope="module")
def cases():
    out = []
    for seed in SEEDS:
        tree, Q, kind = make_case(seed)
        live = tree.points[tree.alive]
        out.append((tree, Q, kind, log_z_enclosure(Q, live), cuts_of(tree, Q, np.random.default_rng(seed))))
    return out


# --------------------------------------------------------------------------- the bracket

def test_oracle_is_sharp():
    """The enclosure is a few 1e-17 wide at logit scale 1e4 (so it resolves 1e-16 x scale errors)
    and agrees with a plain float64 logsumexp."""
    tree, Q, _ = make_case(0)
    live = tree.points[tree.alive]
    enc = log_z_enclosure(Q, live)
    for b, (low, up) in enumerate(enc):
        assert low <= up and float(up - low) < 1e-15
        a = live @ Q[b]
        assert abs(float(low) - (a.max() + np.log(np.sum(np.exp(a - a.max()))))) < 1e-10 * (1 + abs(a).max())


def test_bracket_contains_exact_log_z(cases):
    """lo <= log Z <= hi exactly, for every case, cut and query (log_partition_bracket)."""
    n = 0
    for tree, Q, kind, enc, cuts in cases:
        for cut in cuts:
            lo, hi, _ = log_partition_bracket(tree, Q, cut)
            assert violations(lo, hi, enc) == (0, 0), (kind, lo, hi, [(float(a), float(b)) for a, b in enc])
            n += Q.shape[0]
    assert n >= 1500


def test_unwidened_bracket_is_not_certified(cases):
    """The same oracle catches the bracket without the widening (the issue's finding): both ends fail somewhere."""
    above = below = 0
    for tree, Q, _, enc, cuts in cases:
        for cut in cuts:
            a, b = violations(*unwidened_bracket(tree, Q, cut), enc)
            above, below = above + a, below + b
    assert above > 10 and below > 10, (above, below)


def test_widening_is_tiny(cases):
    """The widening costs at most ~1e-13 of the logit scale: exhausted cuts stay this narrow."""
    for tree, Q, _, _, cuts in cases:
        lo, hi, _ = log_partition_bracket(tree, Q, cuts[-1])
        u_lo, u_hi = unwidened_bracket(tree, Q, cuts[-1])
        scale = 1.0 + np.linalg.norm(Q, axis=1) * _fastpath.tree_scale(tree)
        assert (lo <= u_lo).all() and (hi >= u_hi).all()
        assert ((u_lo - lo) <= 1e-13 * scale).all() and ((hi - u_hi) <= 1e-13 * scale).all()


def test_plain_bracket_is_within_the_rounding_bound():
    """plain.bracket is (2) as float64 computes it, not widened (proofs/README.md section 4.8): widened by
    the fast path's rounding bound W of its cut, it contains the exact log Z, as plain's docstring says."""
    for seed in range(0, 150, 3):
        tree, Q, kind = make_case(seed)
        enc = log_z_enclosure(Q, tree.points[tree.alive])
        for tol in (1e-12, 0.3):
            for b in range(Q.shape[0]):
                lo, hi = plain.bracket(tree, Q[b], tol)
                size = len(plain.adaptive_cut(tree, Q[b], tol))
                w = _fastpath.bracket_rounding(tree, np.linalg.norm(Q[b]), size, max(abs(lo), abs(hi)))
                assert violations(*_fastpath.widen(lo, hi, w), enc[b:b + 1]) == (0, 0), (kind, seed, tol, b)


def test_dynamic_index_bracket_contains_exact_log_z():
    """DynamicIndex.bracket certifies log sum_y exp(<psi_t(x), phi(y)>) exactly as well."""
    rng = np.random.default_rng(5)
    G = rng.normal(size=(40, 4))
    index = DynamicIndex(G, np.arange(6), kernel="rbf", leaf_size=3)
    index.step(G[index.landmarks] + 0.1 * rng.normal(size=(6, 4)))
    F = rng.normal(size=(3, 4)) * 30.0
    enc = log_z_enclosure(index.queries(F), index.phi[index.ids])
    for tol in (1e-12, 0.5):
        lo, hi, _ = index.bracket(F, tol=tol)
        assert violations(lo, hi, enc) == (0, 0)


# --------------------------------------------------------------------------- the radii

def test_stored_radii_vs_exact_distances(cases):
    """Stored radii may fall short of the exact distances (the issue's finding), but never by more than
    the proof's allowance: ||z_y - r_v|| <= rho_v (1 + beta) + tau, beta = (1 - u)^-(k/2 + 2 + H) - 1,
    tau = (H + 1) sqrt(k) 2^-537 (proofs/p02_bracket.md, lemma R), checked in exact rationals."""
    u = Fraction(1, 2**53)
    short = 0
    for tree, _, _, _, _ in cases:
        k, H = tree.dim, _fastpath.tree_height(tree)
        beta = (1 - u) ** -(math.ceil(k / 2) + 2 + H) - 1
        tau = Fraction((H + 1) * math.isqrt(k) + H + 1) * Fraction(1, 2**537)  # >= (H + 1) sqrt(k) 2^-537
        for v in np.flatnonzero(tree.count > 0):
            r = [Fraction(float(x)) for x in tree.rep[v]]
            rho = Fraction(float(tree.radius[v]))
            allowed = (rho * (1 + beta) + tau) ** 2
            for y in tree.order[tree.start[v]:tree.stop[v]]:
                d2 = sum(((Fraction(float(z)) - c) ** 2 for z, c in zip(tree.points[y], r)), Fraction(0))
                assert d2 <= allowed, (v, y, float(d2), float(rho))
                short += d2 > rho * rho
    assert short > 0  # the stored radius is below an exact distance somewhere: the allowance is needed


# --------------------------------------------------------------------------- the adaptive cut's width

@pytest.mark.parametrize("tol", [1.0, 1e-3, 1e-8, 1e-11, 1e-13])
def test_adaptive_cut_width_is_literal(tol):
    """hi - lo <= tol for the reported (widened) bracket, as float64 numbers, or the cut is exhausted."""
    for seed in range(0, 150, 5):
        tree, Q, _ = make_case(seed)
        cut = adaptive_cut(tree, Q, tol)
        lo, hi, _ = log_partition_bracket(tree, Q, cut)
        exhausted = cut_eps(tree, Q, cut) == 0
        assert ((hi - lo <= tol) | exhausted).all(), (seed, hi - lo, tol)
        for b in range(Q.shape[0]):
            p_lo, p_hi = plain.bracket(tree, Q[b], tol)
            p_exhausted = cut_eps(tree, Q[b], plain.adaptive_cut(tree, Q[b], tol)) == 0
            assert p_hi - p_lo <= tol or p_exhausted, (seed, b, p_hi - p_lo, tol)


def test_refinement_fallback_exhausts_queries_left_too_wide(monkeypatch):
    """If the refinement stops with a recomputed bracket still wider than its target (its running sums
    rounded the other way), the query is refined to the end: the width guarantee never rests on them."""
    tree, Q, _ = make_case(7)
    calls = []
    real = _fastpath.refine

    def lazy_first(tree_, Q_, tol=None, **kw):
        calls.append(tol)
        if len(calls) == 1:  # pretend the running sums said "narrow enough" at the root
            return real(tree_, Q_, tol=np.inf, **kw)
        return real(tree_, Q_, tol=tol, **kw)

    monkeypatch.setattr(_fastpath, "refine", lazy_first)
    cut = adaptive_cut(tree, Q, 1e-3)
    assert len(calls) == 2 and np.all(np.isneginf(calls[1]))
    validate_cut(tree, cut, n_queries=Q.shape[0], full=True)
    assert (cut_eps(tree, Q, cut) == 0).all()
    lo, hi, _ = log_partition_bracket(tree, Q, cut)
    assert violations(lo, hi, log_z_enclosure(Q, tree.points[tree.alive])) == (0, 0)
