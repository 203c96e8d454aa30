"""Cost per query against N (log-log): the tree index against brute force, exact sampling and exact top-k.

The numbers come from ``python -m reference bench`` (:mod:`reference.bench`):
the figure reads ``<out_dir>/bench.json`` when it exists (the default output
of ``bench``, so ``bench`` then ``figures`` plot exactly the table's runs),
else it runs a small benchmark itself (``quick``: N = 1000, 3000, 10000 with
50 queries; otherwise N = 1e4, 3e4, 1e5 with 100 queries; one repeat, both
data sets) and saves that JSON next to the figure as ``scaling.json``.

Panels (clustered data solid, unclustered dashed):

1. wall-clock time per query against N, for the tree (rejection sampling of
   the negatives, P6; top-k, P8) and for brute force (all N logits, then
   inverse-CDF sampling / argpartition), measured in the same run;
2. logits evaluated per query against N (node plus target inner products,
   from the samplers' counters; brute force evaluates N), with a reference
   line ``~ N^0.5`` through the smallest clustered point, the growth the
   benchmark's target allows.

Checked on the plotted data (a violation is a bug report, not a figure):
every plotted tree top-k equals the brute-force top-k and every sampled id
is a valid target id (the benchmark's own verification); the fitted
exponents stored in the JSON equal the least-squares slopes of the plotted
logits-per-query points; every plotted cost is positive and finite; the CSV
read back equals the plotted points.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from figures.common import plt, save, write_csv
from reference import bench as B

TITLE = "Cost per query vs N (log-log): tree vs brute force, exact sampling and top-k, from `bench`"

#: Columns of the CSV (one row per data set, N, operation and method).
COLUMNS = ("data", "n", "op", "method", "seconds_per_query", "logits_per_query", "queries_timed")

#: Benchmark the figure runs when no bench JSON is found.
OWN_RUN = {
    True: dict(sizes=(1000, 3000, 10000), queries=50, repeats=1, calibration_queries=16),
    False: dict(sizes=(10_000, 30_000, 100_000), queries=100, repeats=1, calibration_queries=32),
}

_OPS = ("sample", "topk")


def _load_or_run(out_dir: Path, quick: bool, source: Path | None) -> tuple[dict[str, Any], Path]:
    """The benchmark result to plot and the JSON file it lives in."""
    path = source if source is not None else out_dir / "bench.json"
    if path.exists():
        return json.loads(path.read_text()), path
    if source is not None:
        raise ValueError(f"source: expected an existing JSON written by `bench`, got {source}")
    result = B.run_bench(B.BenchConfig(**OWN_RUN[bool(quick)], quick=bool(quick)))
    path = out_dir / "scaling.json"
    B.write_json(path, result)
    return result, path


def _rows(result: dict[str, Any]) -> dict[str, list]:
    """The CSV columns: for every run, both operations by the tree and by brute force."""
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    for r in result["runs"]:
        for op in _OPS:
            o = r[op]
            for method, spq, lpq, q in (("tree", o["tree_per_query"], o["logits_per_query"], o["queries_timed"]),
                                        ("brute", o["brute_per_query"], float(r["n"]), o["brute_queries"])):
                cols["data"].append(r["data"])
                cols["n"].append(int(r["n"]))
                cols["op"].append(op)
                cols["method"].append(method)
                cols["seconds_per_query"].append(float(spq))
                cols["logits_per_query"].append(float(lpq))
                cols["queries_timed"].append(int(q))
    return cols


def _check(result: dict[str, Any], csv_path: Path, cols: dict[str, list]) -> None:
    """Assert the statements of the module docstring on the plotted data."""
    for r in result["runs"]:
        where = f"{r['data']} N={r['n']}"
        assert r["topk"]["agree"], f"{where}: tree top-k differs from brute force"
        assert r["sample"]["ids_valid"], f"{where}: invalid sampled ids"
    for data, fit in result["fits"].items():
        rr = [r for r in result["runs"] if r["data"] == data]
        if len(rr) < 2:
            continue
        x = np.log([r["n"] for r in rr])
        for op in _OPS:
            slope = np.polyfit(x, np.log([r[op]["logits_per_query"] for r in rr]), 1)[0]
            assert np.isclose(slope, fit[op], rtol=1e-9, atol=1e-12), f"{data} {op}: exponent {fit[op]} != {slope}"
    for key in ("seconds_per_query", "logits_per_query"):
        v = np.asarray(cols[key], float)
        assert np.all(np.isfinite(v) & (v > 0)), f"non-positive or non-finite {key}"
    with open(csv_path, newline="") as fh:
        back = list(csv.DictReader(fh))
    assert len(back) == len(cols["n"]), "CSV row count"
    for i, row in enumerate(back):
        assert (row["data"], int(row["n"]), row["op"], row["method"]) == (
            cols["data"][i], cols["n"][i], cols["op"][i], cols["method"][i]), f"CSV row {i} keys"
        for key in ("seconds_per_query", "logits_per_query"):
            assert float(row[key]) == cols[key][i], f"CSV row {i} column {key}"


def make(out_dir: Path, *, quick: bool = False, source: Path | None = None) -> list[Path]:
    """Plot cost per query against N; write the PNG and the CSV behind it.

    Parameters
    ----------
    out_dir : Path
        Output directory.
    quick : bool, default False
        When no bench JSON is found, run a tiny benchmark (seconds) instead
        of the small default one (about a minute on 2 cores).
    source : Path, optional
        A JSON written by ``bench`` (default: ``out_dir / "bench.json"`` if it
        exists).

    Returns
    -------
    list of Path
        The PNG, the CSV and the JSON the numbers come from.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result, json_path = _load_or_run(out_dir, quick, None if source is None else Path(source))
    cols = _rows(result)
    csv_path = write_csv(out_dir / "scaling.csv", cols)
    _check(result, csv_path, cols)

    cfg = result["config"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    style = {"clustered": "-", "isotropic": "--"}
    color = {("sample", "tree"): "C0", ("topk", "tree"): "C1", ("sample", "brute"): "C2", ("topk", "brute"): "C3"}
    name = {"sample": f"exact sampling (n={cfg['negatives']})", "topk": f"exact top-{cfg['topk']}"}
    data_col = np.asarray(cols["data"])
    for data in cfg["data"]:
        for op in _OPS:
            for method in ("tree", "brute"):
                sel = (data_col == data) & (np.asarray(cols["op"]) == op) & (np.asarray(cols["method"]) == method)
                n = np.asarray(cols["n"])[sel]
                label = f"{method}: {name[op]}, {data}"
                axes[0].plot(n, 1e3 * np.asarray(cols["seconds_per_query"])[sel], style[data],
                             color=color[(op, method)], marker="o", ms=4, label=label)
                if method == "tree" or op == "sample":  # brute force evaluates N for both operations
                    lab = label if method == "tree" else f"brute force (N logits), {data}"
                    axes[1].plot(n, np.asarray(cols["logits_per_query"])[sel], style[data],
                                 color=color[(op, method)], marker="o", ms=4, label=lab)
    clustered = [r for r in result["runs"] if r["data"] == "clustered"]
    if clustered:
        r0 = min(clustered, key=lambda r: r["n"])
        ns = np.array(sorted({r["n"] for r in result["runs"]}), float)
        y0 = max(r0["sample"]["logits_per_query"], r0["topk"]["logits_per_query"])
        axes[1].plot(ns, y0 * (ns / r0["n"]) ** 0.5, ":", color="k", lw=1, label="~ N^0.5 (target growth)")
    axes[0].set(xscale="log", yscale="log", xlabel="N (targets)", ylabel="wall time per query (ms)",
                title="time per query (best of repeats)")
    axes[1].set(xscale="log", yscale="log", xlabel="N (targets)", ylabel="logits evaluated per query",
                title="logits per query (node + target inner products)")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(True, which="both", lw=0.3)
    mach = result["machine"]
    fig.suptitle(f"k = {cfg['k']}, {cfg['queries']} queries, perplexity ~{cfg['perplexity']:g}, "
                 f"{mach['cpus']} CPUs, load average {mach['load_start']}-{mach['load_end']} -- {json_path.name}",
                 fontsize=10)
    png = save(fig, out_dir / "scaling.png")
    return [png, csv_path, json_path]
