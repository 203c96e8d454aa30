"""figures/fig_nystrom_error.py as the main job draws it (full size): files exist, CSVs are consistent."""

from __future__ import annotations

import csv

import numpy as np

from figures import fig_nystrom_error


def _read(path):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows, f"{path} is empty"
    return {k: [r[k] for r in rows] for k in rows[0]}


def test_nystrom_figure_at_full_size(main_job):
    out = main_job.out
    for name in ["nystrom_error.csv", "nystrom_error.png", "nystrom_logit.csv", "nystrom_logit.png"]:
        assert (out / name).stat().st_size > 0
    err = _read(out / "nystrom_error.csv")
    e_n = np.array(err["rel_err_nystrom"], float)
    e_s = np.array(err["rel_err_stale"], float)
    s = np.array(err["since_refresh"], int)
    assert np.all(np.isfinite(e_n)) and np.all(e_n >= 0) and np.all(e_s >= 0)
    assert np.all(e_s[s == 0] == 0)  # the stale cache is exact at its own refresh step
    assert set(err["kernel"]) == set(fig_nystrom_error.KERNELS)
    assert set(err["method"]) == {"uniform", "kmeans++", "rls"}
    assert np.all(np.array(err["rank"], int) <= np.array(err["m"], int))
    # the headline: linear kernel, m = M_MAIN, beats the stale cache at the stalest step
    k = np.array(err["kernel"])
    m = np.array(err["m"], int)
    sel = (k == "linear(c=1)") & (m == fig_nystrom_error.M_MAIN) & (s == s.max())
    assert e_n[sel].mean() < 0.5 * e_s[sel].mean()
    lg = _read(out / "nystrom_logit.csv")
    cols = {c: np.array(v, float) for c, v in lg.items()}
    tol = 1e-9 * (1 + np.abs(cols["logz_true"]).max())
    assert np.all(cols["max_logit_err"] <= cols["max_logit_bound"] + tol)  # P12
    assert np.all(cols["logz_err"] <= cols["delta"] + tol)
    assert np.all(cols["lo"] <= cols["logz_hat"] + tol) and np.all(cols["logz_hat"] <= cols["hi"] + tol)
