"""The bound figures as the main job draws them (full size): a PNG and a consistent CSV each.

The figures come from the session's run of the README's command 1
(fixture ``main_job``, ``tests/conftest.py``). Each figure already asserts
its bound on the data it plots; here we re-read the CSV and check that it has
rows, the expected columns, and the plotted relation (with the same 1e-9
tolerances the figures state).
"""

from __future__ import annotations

import csv
import importlib

import numpy as np
import pytest

FIGURES = {
    "fig_bracket_refinement": ["query", "step", "cut_size", "lo", "hi", "log_z_hat", "log_z", "eps_c", "n_targets",
                               "fp_tol"],
    "fig_cut_distribution": ["query", "beta", "cut", "cut_size", "eps_c", "sup_log_ratio", "log_bound", "tv",
                             "tv_bound", "kl_p_phat", "kl_phat_p", "kl_bound", "width", "tv_width_bound"],
    "fig_rejection_acceptance": ["query", "beta", "envelope", "cut_size", "hi_minus_lo", "bound", "exact_rate",
                                 "proposals", "accepted", "measured_rate", "binom_p"],
    "fig_dynamic_bounds": ["step", "event", "leaf_cut_width_mean", "leaf_cut_width_max", "adaptive_cut_size_mean",
                           "adaptive_width_max", "mean_leaf_radius", "nested"],
}


def _read(path):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rows


def _col(rows, name, cast=float):
    return np.array([cast(r[name]) for r in rows])


@pytest.mark.parametrize("name", list(FIGURES))
def test_figure_at_full_size(main_job, name):
    mod = importlib.import_module(f"figures.{name}")
    assert isinstance(mod.TITLE, str) and mod.TITLE
    png = main_job.out / f"{name}.png"
    csv_path = main_job.out / f"{name}.csv"
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _read(csv_path)
    assert rows and list(rows[0]) == FIGURES[name]
    if name == "fig_bracket_refinement":
        lo, hi, lz = _col(rows, "lo"), _col(rows, "hi"), _col(rows, "log_z")
        tol = _col(rows, "fp_tol")  # 1e-9 of the term magnitude, as the figure states
        assert (lo <= lz + tol).all() and (lz <= hi + tol).all()
        assert (hi - lo <= 2 * _col(rows, "eps_c") + tol).all()
        assert (_col(rows, "eps_c") == 0).any(), "each query is refined to the end"
    elif name == "fig_cut_distribution":
        # the figure checked these with its stated tolerances (1e-9 of the term magnitude / absolute);
        # the CSV stores exact float reprs, so a 1e-9 relative + 1e-9 absolute re-check is of the same order
        assert (_col(rows, "sup_log_ratio") <= _col(rows, "log_bound") * (1 + 1e-9) + 1e-9).all()
        assert (_col(rows, "tv") <= _col(rows, "tv_bound") + 1e-9).all()
        assert (_col(rows, "tv") <= _col(rows, "tv_width_bound") + 1e-9).all()                      # P4b
        np.testing.assert_array_equal(_col(rows, "tv_width_bound"), -np.expm1(-_col(rows, "width")))
        assert (_col(rows, "tv_width_bound") <= _col(rows, "tv_bound") + 1e-9).all()  # never weaker than P4's
        assert len({r["cut"] for r in rows}) == 6
    elif name == "fig_rejection_acceptance":
        assert (_col(rows, "exact_rate") >= _col(rows, "bound") * (1 - 1e-9)).all()
        assert (_col(rows, "binom_p") >= 1e-6).all()
        np.testing.assert_allclose(_col(rows, "measured_rate"), _col(rows, "accepted") / _col(rows, "proposals"))
    elif name == "fig_dynamic_bounds":
        events = [r["event"] for r in rows]
        nested = [r["nested"] == "True" for r in rows]
        assert nested == [e == "build" or e.startswith("rebuild") for e in events]
        assert (_col(rows, "adaptive_width_max") <= 1.0 + 1e-9).all()
