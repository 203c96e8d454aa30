"""Cost per query against N (log-log): the tree index against brute force, exact sampling and exact top-k.

The numbers come from ``python -m reference bench`` (:mod:`reference.bench`):
the figure reads ``<out_dir>/bench.json`` when it exists (the default output
of ``bench``, so ``bench`` then ``figures`` plot exactly the table's runs),
or the JSON given by ``figures --bench-json PATH`` (e.g. the committed
paper-scale run, ``reference/bench_paper_scale.json``, N = 1e4 to 2e7),
else it runs a small benchmark itself (``quick``: N = 1000, 3000, 10000 with
50 queries; otherwise N = 1e4, 3e4, 1e5 with 100 queries; one repeat, both
data sets) and saves that JSON next to the figure as ``scaling.json``.

Panels (log-log, one line per series, every series named in a legend
placed under its panel so that no legend covers data):

1. wall-clock time per query (microseconds) against N, for the tree
   (rejection sampling of the negatives, P6; top-k, P8) and for brute force
   (all N logits, then inverse-CDF sampling / argpartition), measured in the
   same run: one series per (data set, method, operation), 8 with both
   data sets;
2. logits evaluated per query against N (node plus target inner products,
   from the samplers' counters): the tree's series (data set x operation);
   brute force evaluates N for either operation on any data set, so its
   CSV series coincide and are drawn as one line ``y = N``; and a reference
   line ``~ N^0.5`` through the smallest clustered point, the growth the
   benchmark's target allows.

Encoding: the colour names the (method, data set) pair (``COLOURS``: blues
for the tree, oranges for brute force; dark for clustered, light for
isotropic), the line style and marker shape the operation (``OP_STYLE``:
sampling solid with circles, top-k dashed with triangles), and the marker
fill repeats the data set (filled for the first data set of the run, open
for the others). The x ticks are the benchmark's N.

Checked on the plotted data (a violation is a bug report, not a figure):
every plotted tree top-k equals the brute-force top-k and every sampled id
is a valid target id (the benchmark's own verification); the fitted
exponents stored in the JSON (over all sizes, and over N >= 1e5 where
stored) equal the least-squares slopes of the plotted logits-per-query
points; every plotted cost is positive and finite; the CSV
read back equals the plotted points.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import LogFormatter, NullFormatter

from figures.common import plt, save, write_csv
from reference import bench as B
from reference.jsonio import write_json

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
    write_json(path, result)
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
        for sub, what in ((rr, fit), ([r for r in rr if r["n"] >= fit.get("from_n", {}).get("n_min", 0)],
                                       fit.get("from_n"))):
            if what is None:
                continue
            x = np.log([r["n"] for r in sub])
            for op in _OPS:
                slope = np.polyfit(x, np.log([r[op]["logits_per_query"] for r in sub]), 1)[0]
                assert np.isclose(slope, what[op], rtol=1e-9, atol=1e-12), (
                    f"{data} {op}: exponent {what[op]} != {slope}")
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


#: One colour per (method, data set): blues for the tree, oranges for brute force (Okabe-Ito, colour-blind safe).
COLOURS = {("tree", "clustered"): "#0072B2", ("tree", "isotropic"): "#56B4E9",
           ("brute", "clustered"): "#D55E00", ("brute", "isotropic"): "#E69F00"}
_EXTRA_COLOURS = ("#009E73", "#CC79A7", "#000000", "#F0E442")  # for data sets other than the two above
#: Line style and marker shape by operation; the marker is filled for the first data set, open for the others.
OP_STYLE = {"sample": dict(ls="-", marker="o"), "topk": dict(ls="--", marker="^")}


class _PlainLogFormatter(LogFormatter):
    """Log-axis labels as plain numbers (``20``, ``0.5``, ``10000``), on the ticks LogFormatter would label."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def _colour(method: str, data: str, datasets: list[str]) -> str:
    if (method, data) in COLOURS:
        return COLOURS[(method, data)]
    i = 2 * datasets.index(data) + (method == "brute")
    return _EXTRA_COLOURS[i % len(_EXTRA_COLOURS)]


def _plot(result: dict[str, Any], cols: dict[str, list], json_path: Path) -> "plt.Figure":
    """Both panels (see the module docstring); legends below the panels so that they hide no data."""
    cfg = result["config"]
    datasets = list(cfg["data"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.8))
    name = {"sample": f"sampling ({cfg['negatives']} negatives)", "topk": f"top-{cfg['topk']}"}
    a = {k: np.asarray(v) for k, v in cols.items()}
    ns = np.array(sorted(set(cols["n"])), float)
    for data in datasets:
        for method in ("tree", "brute"):
            for op in _OPS:
                sel = (a["data"] == data) & (a["op"] == op) & (a["method"] == method)
                order = np.argsort(a["n"][sel])
                n = a["n"][sel][order]
                colour = _colour(method, data, datasets)
                style = dict(color=colour, ms=6, lw=1.6, mec=colour, mew=1.3,
                             mfc=colour if data == datasets[0] else "white", **OP_STYLE[op])
                who = "tree" if method == "tree" else "brute force"
                axes[0].plot(n, 1e6 * a["seconds_per_query"][sel][order],
                             label=f"{who}, {data}: {name[op]}", **style)
                if method == "tree":
                    axes[1].plot(n, a["logits_per_query"][sel][order], label=f"tree, {data}: {name[op]}", **style)
    # brute force evaluates all N logits for either operation on any data set: one line, not one per
    # (data set, operation) drawn on top of each other (the CSV holds them all)
    brute = a["method"] == "brute"
    nb = np.array(sorted(set(a["n"][brute].tolist())), float)
    axes[1].plot(nb, nb, color="0.35", lw=2.2, marker="s", ms=5,
                 label="brute force, any data set: N logits (sampling and top-k alike)")
    clustered = [r for r in result["runs"] if r["data"] == "clustered"]
    if clustered:
        r0 = min(clustered, key=lambda r: r["n"])
        y0 = max(r0["sample"]["logits_per_query"], r0["topk"]["logits_per_query"])
        axes[1].plot(ns, y0 * (ns / r0["n"]) ** 0.5, ":", color="k", lw=1.2,
                     label="~ N^0.5 through the smallest clustered point (the benchmark's target growth)")
    axes[0].set(ylabel="wall-clock time per query (microseconds)", title="time per query (median of the repeats)")
    axes[1].set(ylabel="logits evaluated per query", title="logits per query (node + target inner products)")
    key = "colour: method and data set;  line and marker shape: operation"
    if len(datasets) > 1:
        key += f";  filled marker: {datasets[0]}, open: {', '.join(datasets[1:])}"
    for ax in axes:
        ax.set(xscale="log", yscale="log", xlabel="N (number of targets)")
        ax.set_xticks(ns, [f"{int(v):,}" for v in ns])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(_PlainLogFormatter())
        ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        ax.grid(True, which="both", lw=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1 if ax is axes[1] else 2,
                  frameon=False, title=key, title_fontsize=8)
    mach = result["machine"]
    fig.suptitle(f"Cost per query vs N: tree index vs brute force, exact sampling and exact top-k.  "
                 f"k = {cfg['k']}, {cfg['queries']} queries, perplexity ~{cfg['perplexity']:g}, "
                 f"{mach['cpus']} CPUs, load average {mach['load_start']}-{mach['load_end']} -- {json_path.name}",
                 fontsize=10)
    return fig


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

    fig = _plot(result, cols, json_path)
    png = save(fig, out_dir / "scaling.png")
    return [png, csv_path, json_path]
