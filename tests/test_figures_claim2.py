"""Smoke test of figures/fig_claim2_memory.py: PNG and CSV written, the CSV is the accounting."""

from __future__ import annotations

import csv
import dataclasses

from figures import fig_claim2_memory as fig
from figures.run import figure_modules
from reference import train as T
from reference.miners import memory_accounting


def test_claim2_figure_draws_the_accounting_over_n(tmp_path):
    assert "claim2_memory" in figure_modules()
    png, csv_path = fig.make(tmp_path, quick=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    sizes = fig.decide_sizes()
    ns = sorted({int(r["n_targets"]) for r in rows})
    assert ns[0] == 10_000 and ns[-1] == T.PAPER_N and set(T.CLAIM2_GRID) <= set(ns)
    assert {r["miner"] for r in rows} == {"tree_nystrom", "stale_softmax", "neg_cache", "brute_topk", "exact_softmax"}
    for r in rows:
        want = memory_accounting(r["miner"], dataclasses.replace(sizes, n_targets=int(r["n_targets"])))[r["rule"]]
        assert (int(r["step_bytes"]), int(r["peak_bytes"])) == (want["step_bytes"], want["peak_bytes"])
