"""Claim 2 by the accounting: accelerator memory of the method, the prior art and brute force against N.

The paper: the method "surpasses prior state-of-the-art while using 150x less
accelerator memory", on over 20 million targets. This figure draws, for N
from 1e4 to 2.1e7 (the paper's size), the accelerator bytes of
``reference.miners.memory_accounting`` (proofs/README.md section 8; reference/COMPARISON.md) for the method (``tree_nystrom``), the prior art the claim
names (``stale_softmax``: the stale index with its N x d table resident,
re-encoded every R steps; ``neg_cache``: the negative cache) and, beside
them, brute force (``brute_topk`` and ``exact_softmax``, every target
re-encoded every step), per step (no refresh) and at the peak (a refresh
step), under both rules (materialised: every pass held whole; streamed:
blocks of B_s rows). The sizes are the ``decide`` preset's (d, B, n, C, m,
the encoder's widths), with N varied. An accounting: no sampling error.

Panels: 1. materialised bytes, 2. streamed bytes (step: solid, peak:
dashed), 3. the ratios accelerator(prior) / accelerator(tree_nystrom) at the
peak (solid) and per step (dotted), with the claim's 150x.

CSV ``claim2_memory.csv``: one row per (N, miner, rule) with the step and
peak bytes. Checked on the plotted data: at every N of
``reference.train.CLAIM2_GRID`` the bytes and ratios equal
``reference.train.claim2_table`` (the table ``compare`` prints), and every
peak is at least its step.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from figures.common import plt, save, write_csv
from reference import train as T
from reference.encoder import DualEncoder
from reference.miners import MEMORY_RULES, Sizes, memory_accounting

TITLE = "Claim 2: accelerator memory of the method vs the prior art and brute force, N = 1e4 .. 2.1e7"

#: The miners drawn: the method, the prior art of claim 2, and brute force beside them.
DRAWN = ("tree_nystrom", *T.CLAIM2_PRIOR, "brute_topk", "exact_softmax")


def decide_sizes() -> Sizes:
    """The accounting's sizes of the ``decide`` preset (its encoder and budget; N to be replaced)."""
    preset = {k: v for k, v in T.PRESETS["decide"].items() if k != "seeds"}
    cfg = T.TrainConfig(**preset)
    data = T.make_data(dataclasses.replace(cfg, n_targets=max(cfg.cache_size, cfg.landmarks, 2),
                                           queries_per_target=1))  # only the feature widths are read
    model = DualEncoder(T._encoder_config(cfg, data), seed=0)
    return dataclasses.replace(T.sizes_for(cfg, data, model), n_targets=cfg.n_targets)


def make(out_dir: Path, *, quick: bool = False) -> list[Path]:
    """Draw the figure and write its CSV (``quick``: fewer sizes between the grid points).

    Returns
    -------
    list of Path
        The PNG and the CSV.
    """
    out_dir = Path(out_dir)
    sizes = decide_sizes()
    grid = sorted(set(np.unique(np.geomspace(1e4, T.PAPER_N, 9 if quick else 40).astype(np.int64)).tolist())
                  | set(T.CLAIM2_GRID))
    acc = {n: {m: memory_accounting(m, dataclasses.replace(sizes, n_targets=n)) for m in DRAWN} for n in grid}
    # check against the table compare prints, at its grid
    table = T.claim2_table(sizes)
    for row in table["rows"]:
        n = row["n_targets"]
        for m in DRAWN:
            assert acc[n][m] == row["bytes"][m], f"N = {n}, {m}: the figure's bytes differ from claim2_table"
        for prior in (*T.CLAIM2_PRIOR, "brute_topk"):
            for rule in MEMORY_RULES:
                want = acc[n][prior][rule]["peak_bytes"] / acc[n]["tree_nystrom"][rule]["peak_bytes"]
                assert row["ratios"][prior][rule]["peak"] == want, f"N = {n}, {prior}, {rule}: ratio"
    cols: dict[str, list] = {"n_targets": [], "miner": [], "rule": [], "step_bytes": [], "peak_bytes": []}
    for n in grid:
        for m in DRAWN:
            for rule in MEMORY_RULES:
                e = acc[n][m][rule]
                assert e["peak_bytes"] >= e["step_bytes"], f"N = {n}, {m}, {rule}: peak below step"
                cols["n_targets"].append(n)
                cols["miner"].append(m)
                cols["rule"].append(rule)
                cols["step_bytes"].append(e["step_bytes"])
                cols["peak_bytes"].append(e["peak_bytes"])
    csv_path = write_csv(out_dir / "claim2_memory.csv", cols)

    fig, axes = plt.subplots(1, 3, figsize=(18, 4.8))
    colors = dict(zip(DRAWN, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    x = np.asarray(grid, dtype=np.float64)
    mib = 2.0**20
    for ax, rule in zip(axes[:2], MEMORY_RULES):
        for m in DRAWN:
            step = np.array([acc[n][m][rule]["step_bytes"] for n in grid]) / mib
            peak = np.array([acc[n][m][rule]["peak_bytes"] for n in grid]) / mib
            lw = 2.2 if m == "tree_nystrom" else 1.2
            ax.plot(x, step, color=colors[m], lw=lw, label=f"{m} per step")
            ax.plot(x, peak, color=colors[m], lw=lw, ls="--", label=f"{m} peak")
        ax.set(xscale="log", yscale="log", xlabel="N (targets)", ylabel="accelerator MiB",
               title=f"{rule}" + (f" (blocks of {sizes.block_rows} rows)" if rule == "streamed" else " (passes whole)"))
        ax.axvline(T.PAPER_N, color="k", lw=0.5)
    axes[0].legend(fontsize=7, ncol=2)
    ax = axes[2]
    for prior in (*T.CLAIM2_PRIOR, "brute_topk"):
        for rule, mark in zip(MEMORY_RULES, ("o", "s")):
            peak = [acc[n][prior][rule]["peak_bytes"] / acc[n]["tree_nystrom"][rule]["peak_bytes"] for n in grid]
            step = [acc[n][prior][rule]["step_bytes"] / acc[n]["tree_nystrom"][rule]["step_bytes"] for n in grid]
            ax.plot(x, peak, color=colors[prior], marker=mark, ms=3, label=f"{prior} / method, {rule}, peak")
            ax.plot(x, step, color=colors[prior], marker=mark, ms=2, ls=":", lw=0.8)
    ax.axhline(T.CLAIM2_RATIO, color="k", lw=1.0, ls="--", label=f"the claim: {T.CLAIM2_RATIO:.0f}x")
    ax.axhline(1.0, color="k", lw=0.5)
    ax.axvline(T.PAPER_N, color="k", lw=0.5)
    ax.set(xscale="log", yscale="log", xlabel="N (targets)", ylabel="accelerator(other) / accelerator(tree_nystrom)",
           title="ratio to the method (solid: peak, dotted: per step)")
    ax.legend(fontsize=7)
    fig.suptitle(f"Claim 2 by the accounting of reference/miners.py: decide preset's sizes (d = {sizes.out_dim}, "
                 f"B = {sizes.batch_size}, n = {sizes.negatives}, C = {sizes.cache_size}, m = {sizes.landmarks}), "
                 f"N varied; vertical line: N = {T.PAPER_N:.2g}", fontsize=10)
    png = save(fig, out_dir / "claim2_memory.png")
    return [png, csv_path]
