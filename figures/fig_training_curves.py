"""Training curves of every negative miner: test loss, recall@10 and gradient error against step.

The numbers come from ``python -m reference compare`` (proofs/README.md section 8): the
figure reads ``<out_dir>/compare.json`` when it exists (the default output of
``compare``, so ``compare`` then ``figures`` plot exactly the table's runs),
else it runs a comparison itself (``quick``: the ``quick`` preset, one seed;
otherwise the default budget with one seed) and saves that JSON next to the
figure as ``training_curves.json``.

Panels (one line per miner, the mean over seeds; the band spans the seeds'
minimum and maximum):

1. full-softmax test loss against training step;
2. the test-loss gap to full-softmax training, loss(miner) - loss(full),
   paired by seed (the quantity of the paper's first claim);
3. test recall@10 against training step;
4. relative error ||g - g*|| / ||g*|| of the training gradient against the
   exact full-softmax gradient (log scale; the full-softmax miner's is 0 and
   is not drawn on the log axis).

Checked on the plotted data (a violation is a bug report, not a figure): the
full-softmax miner's gradient error is exactly 0 at every checkpoint; each
run's last curve point equals its reported final metrics; the summary's
per-miner means equal the mean of the plotted final points; the CSV read back
equals the JSON.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from figures.common import plt, save, write_csv
from reference import train as T
from reference.jsonio import write_json

TITLE = "Training curves per miner (test loss, recall@10, gradient error vs step) from `compare`"

#: Columns of the CSV (one row per run and evaluation step).
COLUMNS = ("miner", "seed", "step", "target_rows", "logits", "loss", "recall@1", "recall@10", "recall@100",
           "grad_error")


def _load_or_run(out_dir: Path, quick: bool, source: Path | None) -> tuple[dict[str, Any], Path]:
    """The comparison to plot and the JSON file it lives in."""
    for path in ([source] if source is not None else [out_dir / "compare.json"]):
        if path.exists():
            return json.loads(path.read_text()), path
    if source is not None:
        raise ValueError(f"source: expected an existing JSON written by `compare`, got {source}")
    preset = dict(T.PRESETS["quick" if quick else "default"])
    preset.pop("seeds", None)
    result = T.compare(T.TrainConfig(**preset), seeds=[0])
    path = out_dir / "training_curves.json"
    write_json(path, result)
    return result, path


def _rows(result: dict[str, Any]) -> dict[str, list]:
    """The CSV columns: every run's curve, one row per evaluation step."""
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    for r in result["runs"]:
        c = r["curve"]
        grad = dict(zip(c["grad_step"], c["grad_error"]))
        for i, step in enumerate(c["step"]):
            cols["miner"].append(r["miner"])
            cols["seed"].append(r["seed"])
            cols["step"].append(step)
            for k in ("target_rows", "logits", *T.METRICS):
                cols[k].append(c[k][i])
            cols["grad_error"].append(float(grad.get(step, np.nan)))  # none after the last update
    return cols


def _check(result: dict[str, Any], csv_path: Path, cols: dict[str, list]) -> None:
    """Assert the statements of the module docstring on the plotted data."""
    runs = result["runs"]
    for r in runs:
        if r["miner"] == "full":
            assert all(e == 0.0 for e in r["curve"]["grad_error"]), f"full softmax: gradient error {r['curve']['grad_error']}"
        for k in T.METRICS:
            assert r["curve"][k][-1] == r["final"][k], f"{r['miner']} seed {r['seed']}: last {k} point != final"
    for m, e in result["summary"]["per_miner"].items():
        finals = [r["final"]["loss"] for r in runs if r["miner"] == m]
        assert np.isclose(e["loss"]["mean"], np.mean(finals), rtol=1e-12), f"{m}: summary loss mean"
    with open(csv_path, newline="") as fh:
        back = list(csv.DictReader(fh))
    assert len(back) == len(cols["step"]), "CSV row count"
    for i, row in enumerate(back):
        assert row["miner"] == cols["miner"][i] and int(row["step"]) == cols["step"][i]
        for k in (*T.METRICS, "grad_error"):
            a, b = float(row[k]), float(cols[k][i])
            assert a == b or (np.isnan(a) and np.isnan(b)), f"CSV row {i} column {k}: {a} != {b}"


def make(out_dir: Path, *, quick: bool = False, source: Path | None = None) -> list[Path]:
    """Plot the training curves of a comparison; write the PNG and the CSV behind it.

    Parameters
    ----------
    out_dir : Path
        Output directory.
    quick : bool, default False
        When no comparison JSON is found, run the ``quick`` preset (seconds)
        instead of the default budget (one seed, about a minute on 2 cores).
    source : Path, optional
        A JSON written by ``compare`` (default: ``out_dir / "compare.json"``
        if it exists).

    Returns
    -------
    list of Path
        The PNG, the CSV and the JSON the numbers come from.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result, json_path = _load_or_run(out_dir, quick, None if source is None else Path(source))
    cols = _rows(result)
    csv_path = write_csv(out_dir / "training_curves.csv", cols)
    _check(result, csv_path, cols)

    miners, seeds = result["miners"], result["seeds"]
    cfg = result["config"]
    by = {(r["miner"], r["seed"]): r for r in result["runs"]}
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def band(ax, x, y, color, label, **kw):
        ax.plot(x, y.mean(axis=0), color=color, label=label, lw=2 if label == "tree_nystrom" else 1.2, **kw)
        ax.fill_between(x, y.min(axis=0), y.max(axis=0), color=color, alpha=0.15)

    for i, m in enumerate(miners):
        color = colors[i % len(colors)]
        steps = np.asarray(by[(m, seeds[0])]["curve"]["step"])
        loss = np.array([by[(m, s)]["curve"]["loss"] for s in seeds])
        band(axes[0], steps, loss, color, m)
        if "full" in miners:
            full = np.array([by[("full", s)]["curve"]["loss"] for s in seeds])
            band(axes[1], steps, loss - full, color, m)
        band(axes[2], steps, np.array([by[(m, s)]["curve"]["recall@10"] for s in seeds]), color, m)
        if m != "full":
            gs = np.asarray(by[(m, seeds[0])]["curve"]["grad_step"])
            band(axes[3], gs, np.array([by[(m, s)]["curve"]["grad_error"] for s in seeds]), color, m,
                 marker="o", ms=3)
    axes[0].set(xlabel="training step", ylabel="full-softmax test loss", title="test loss")
    axes[1].set(xlabel="training step", ylabel="loss(miner) - loss(full)", title="test-loss gap to full softmax")
    axes[1].axhline(0.0, color="k", lw=0.5)
    axes[2].set(xlabel="training step", ylabel="test recall@10", title="recall@10")
    axes[3].set(xlabel="training step", ylabel="||g - g*|| / ||g*||", yscale="log",
                title="training-gradient error vs full softmax")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"N = {cfg['n_targets']}, {cfg['steps']} steps, B = {cfg['batch_size']}, n = {cfg['negatives']}, "
                 f"seeds {seeds} (line: mean, band: min-max) -- {json_path.name}", fontsize=10)
    png = save(fig, out_dir / "training_curves.png")
    return [png, csv_path, json_path]
