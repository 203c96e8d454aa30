"""Figure: the rejection sampler's acceptance rate against its bound exp(-(hi - lo)) (P6).

Clustered targets, queries at several temperatures, and the envelopes the
sampler uses: ``rejection_sample(..., tol=t)`` refines its cut as
``adaptive_cut`` with tolerance ``t``, and ``tol=None`` (the default) balances
refinement against the number of draws. For each (query, envelope), the cut
plotted is the one that query's ``rejection_sample`` call proposes from,
``rejection_envelope(tree, q, n_draws, tol)`` (one query per call, as the
sampler is called); its bracket ``[lo, hi]`` gives the exact acceptance
probability per proposal ``exp(log Z - hi)`` (brute-force log Z) and its
certified lower bound ``exp(-(hi - lo))``; the measured rate is accepted /
proposals of the sampler's run.

Checked on the plotted data (AssertionError otherwise): the sampler's
``cut_entries`` counter equals the size of the plotted cut (it proposed from
that cut), ``exp(log Z - hi) >= exp(-(hi - lo))`` (deterministic, to 1e-9 of
the term magnitude), ``hi - lo <= tol`` for the adaptive envelopes (P7), and
the measured rate agrees with ``exp(log Z - hi)`` (two-sided exact binomial
test, failure at p < 1e-6, the false-alarm rate per point; fixed seeds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import logsumexp
from scipy.stats import binomtest

from matplotlib.ticker import NullFormatter

from figures.common import plt, save, write_csv
from reference.bounds import log_partition_bracket
from reference.data import make_targets
from reference.sampling import rejection_envelope, rejection_sample
from reference.tree import Tree

TITLE = "Rejection sampler: acceptance rate per proposal vs exp(log Z - hi) and the bound exp(-(hi - lo)) (P6)"

FP_RTOL = 1e-9
ALPHA = 1e-6


def make(out_dir: Path, *, quick: bool = False) -> list[Path]:
    n, dim, n_queries, n_draws = (3000, 8, 6, 1000) if quick else (20000, 16, 16, 2000)
    z = make_targets(n, dim, seed=4)
    tree = Tree.build(z, seed=4)
    rng = np.random.default_rng(5)
    pos = rng.integers(0, n, n_queries)
    betas = np.geomspace(2.0, 60.0, n_queries)
    Q = betas[:, None] * (z[pos] + 0.2 * rng.normal(size=(n_queries, dim)) / np.sqrt(dim))
    log_z = logsumexp(Q @ z.T, axis=1)
    scale = 1.0 + np.linalg.norm(Q, axis=1) * (2 * np.linalg.norm(z, axis=1).max() + tree.radius[0]) + np.log(n)
    rows = {k: [] for k in ("query", "beta", "envelope", "cut_size", "hi_minus_lo", "bound", "exact_rate",
                            "proposals", "accepted", "measured_rate", "binom_p")}
    envelopes = [0.25, 1.0, 3.0, None]
    for tol in envelopes:
        label = "default (tol=None)" if tol is None else f"adaptive tol={tol:g}"
        for b in range(n_queries):
            cut = rejection_envelope(tree, Q[b], n_draws, tol)
            lo, hi, _ = log_partition_bracket(tree, Q[b], cut)
            exact = float(np.exp(log_z[b] - hi))
            bound = float(np.exp(-(hi - lo)))
            fp = FP_RTOL * scale[b]
            assert log_z[b] - hi >= lo - hi - fp, f"P6 bound violated ({label}, query {b})"
            if tol is not None:
                assert hi - lo <= tol + fp, f"P7 width violated ({label}, query {b})"
            _, c = rejection_sample(tree, Q[b], n_draws, rng, tol=tol)
            assert c["cut_entries"] == len(cut), (
                f"{label}, query {b}: the sampler proposed from a cut of {c['cut_entries']} entries, "
                f"not the plotted one of {len(cut)}")
            p = binomtest(c["accepted"], c["proposals"], min(exact, 1.0)).pvalue
            assert p >= ALPHA, f"measured acceptance {c['accepted']}/{c['proposals']} vs exact {exact:.4f} (p={p:.1e})"
            vals = (b, float(betas[b]), label, len(cut), float(hi - lo), bound, exact,
                    c["proposals"], c["accepted"], c["accepted"] / c["proposals"], p)
            for k, v in zip(rows, vals):
                rows[k].append(v)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    env = np.array(rows["envelope"])
    for label in dict.fromkeys(rows["envelope"]):
        m = env == label
        bnd, meas, ex = (np.array(rows[k])[m] for k in ("bound", "measured_rate", "exact_rate"))
        pts = axes[0].scatter(bnd, meas, s=14, label=label)
        axes[0].scatter(bnd, ex, s=30, facecolors="none", edgecolors=pts.get_facecolor())
        axes[1].scatter(np.array(rows["beta"])[m], meas, s=14, label=label)
    lo_lim = max(min(rows["bound"]) / 2, 1e-8)
    axes[0].plot([lo_lim, 1], [lo_lim, 1], "k-", lw=0.8, label="y = exp(-(hi - lo))")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("certified bound exp(-(hi - lo))")
    axes[0].set_ylabel("acceptance rate per proposal")
    axes[0].scatter([], [], s=30, facecolors="none", edgecolors="k", label="circles: exact exp(log Z - hi)")
    axes[0].set_title(f"acceptance >= exp(-(hi - lo)) (P6); N={n}, {n_draws} draws/point", fontsize=10)
    axes[0].legend(fontsize=7)
    axes[1].set_xscale("log")
    axes[1].set_ylim(0, 1.05)
    axes[1].xaxis.set_minor_formatter(NullFormatter())
    axes[1].set_xlabel("query scale beta (||q|| ~ beta)")
    axes[1].set_ylabel("measured acceptance rate")
    axes[1].set_title("acceptance vs temperature")
    axes[1].legend(fontsize=7)
    stem = Path(out_dir) / "fig_rejection_acceptance"
    return [save(fig, stem.with_suffix(".png")), write_csv(stem.with_suffix(".csv"), rows)]
