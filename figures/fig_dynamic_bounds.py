"""Figure: bounds stay valid (and loosen) as targets move, and tighten again after a rebuild (P2, P7, P9).

Clustered targets and a tree built on them. Each step moves every target by
the same small smooth map, z <- z + delta A z with A skew-symmetric (a slow
rotation of the embedding space, as between two encoder refreshes: clusters
move but stay tight), through ``Tree.update``, which only enlarges radii
along the moved targets' paths (I3, no I4): representatives go stale. After
``n_moves`` steps the tree is re-clustered with ``Tree.rebuild(1)`` (partial
rebuild), and after two more updates fully with ``rebuild(0)``.
For fixed queries we track: the bracket width hi - lo of the cut made of all
leaves (a cut of fixed shape, so its width shows the radii), the size of
``adaptive_cut(tol=1)`` (the work needed to certify log Z to 1 nat), and the
mean leaf radius.

Checked on the plotted data at every step (AssertionError otherwise):
``Tree.check_invariants()``; both cuts bracket the brute-force log Z (P2);
the adaptive cut has hi - lo <= 1 (P7). Tolerance 1e-9 of the term
magnitude (proofs/README.md section 6). Also checked: the leaf-cut bracket never narrows
under updates (radii only grow, representatives stay put, the leaves keep
their targets), and each rebuild narrows it (the empirical claim the figure
illustrates).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import logsumexp

from figures.common import plt, save, write_csv
from reference.bounds import Cut, adaptive_cut, log_partition_bracket
from reference.data import make_targets
from reference.tree import Tree

TITLE = "Dynamic index: bounds valid and loosening under Tree.update, tightening after Tree.rebuild (P2, P7, P9)"

FP_RTOL = 1e-9
TOL = 1.0


def _leaf_cut(tree: Tree, n_queries: int) -> Cut:
    """All non-empty leaves (the same cut for every query): its width reflects the leaf radii."""
    v = np.flatnonzero((tree.count > 0) & tree.is_leaf)
    return Cut(np.repeat(np.arange(n_queries), v.size), np.tile(v, n_queries),
               np.full(v.size * n_queries, -1, np.int64), n_queries)


def make(out_dir: Path, *, quick: bool = False) -> list[Path]:
    n, dim, n_queries, n_moves = (4000, 8, 6, 6) if quick else (30000, 16, 12, 10)
    rng = np.random.default_rng(6)
    z = make_targets(n, dim, seed=6)
    tree = Tree.build(z, seed=6)
    pos = rng.integers(0, n, n_queries)
    Q = 20.0 * (z[pos] + 0.2 * rng.normal(size=(n_queries, dim)) / np.sqrt(dim))
    G = rng.normal(size=(dim, dim))
    A = (G - G.T) / 2
    A /= np.linalg.norm(A, 2)                    # skew-symmetric, spectral norm 1
    delta = 0.04                                 # targets have O(1) norms: ~0.04 displacement per step
    rows = {k: [] for k in ("step", "event", "leaf_cut_width_mean", "leaf_cut_width_max", "adaptive_cut_size_mean",
                            "adaptive_width_max", "mean_leaf_radius", "nested")}
    schedule = ["build"] + ["update"] * n_moves + ["rebuild(1)"] + ["update"] * 2 + ["rebuild(0)"]
    for step, event in enumerate(schedule):
        if event == "update":
            ids = np.flatnonzero(tree.alive)
            tree.update(ids, tree.points[ids] + delta * tree.points[ids] @ A.T)
        elif event.startswith("rebuild"):
            tree.rebuild(int(event[len("rebuild("):-1]))
        tree.check_invariants()
        pts = tree.points[tree.alive]
        log_z = logsumexp(Q @ pts.T, axis=1)
        scale = 1.0 + np.linalg.norm(Q, axis=1) * (2 * np.linalg.norm(pts, axis=1).max() + tree.radius[0]) + np.log(n)
        fp = FP_RTOL * scale
        lo, hi, _ = log_partition_bracket(tree, Q, _leaf_cut(tree, n_queries))
        assert (lo <= log_z + fp).all() and (log_z <= hi + fp).all(), f"P2 violated after {event} (step {step})"
        cut = adaptive_cut(tree, Q, TOL)
        alo, ahi, _ = log_partition_bracket(tree, Q, cut)
        assert (alo <= log_z + fp).all() and (log_z <= ahi + fp).all(), f"P7 bracket violated (step {step})"
        assert (ahi - alo <= TOL + fp).all(), f"P7 width violated (step {step})"
        leaves = tree.is_leaf & (tree.count > 0)
        vals = (step, event, float(np.mean(hi - lo)), float(np.max(hi - lo)), float(cut.sizes.mean()),
                float(np.max(ahi - alo)), float(tree.radius[leaves].mean()), bool(tree.nested))
        for k, v in zip(rows, vals):
            rows[k].append(v)
    w = np.array(rows["leaf_cut_width_mean"])
    first_rebuild = schedule.index("rebuild(1)")
    assert w[first_rebuild] < w[first_rebuild - 1] and w[-1] < w[-2], "a rebuild should tighten the leaf-cut bracket"
    assert np.all(np.diff(w[1:first_rebuild]) >= 0), "updates only enlarge radii: the leaf-cut bracket must not tighten"
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.0))
    steps = np.array(rows["step"])
    for ax, key, ylabel in ((axes[0], "leaf_cut_width_mean", "mean hi - lo of the cut of all leaves"),
                            (axes[1], "adaptive_cut_size_mean", f"mean |adaptive_cut(tol={TOL:g})|"),
                            (axes[2], "mean_leaf_radius", "mean leaf radius")):
        ax.plot(steps, rows[key], "o-")
        for s, e in zip(steps, rows["event"]):
            if e.startswith("rebuild"):
                ax.axvline(s, color="k", ls="--", lw=0.8)
                ax.text(s, ax.get_ylim()[1], f" {e}", va="top", fontsize=8)
        ax.set_xlabel("step (every target moved by z += delta A z per update)")
        ax.set_ylabel(ylabel)
    axes[0].set_title("certified bracket width (always contains log Z)", fontsize=10)
    axes[1].set_title("work to certify log Z within 1 nat", fontsize=10)
    axes[2].set_title(f"radii grow under update (N={n}, k={dim})", fontsize=10)
    stem = Path(out_dir) / "fig_dynamic_bounds"
    return [save(fig, stem.with_suffix(".png")), write_csv(stem.with_suffix(".csv"), rows)]
