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
   exact full-softmax gradient at every measured step (``grad_every``: every
   step by default; log scale; the full-softmax miner's is 0 and is not drawn
   on the log axis);
5. the same error against t mod R, the steps since the last refresh of the
   stale caches (stale_topk, stale_softmax, tree_stale, tree_nystrom; for the other miners
   the phase is a control): per run the mean over its measured steps of each
   phase, then the mean over seeds. A measurement only at refresh steps
   would see only the left end of this panel. Phase 0 includes step 0, the
   untrained model (the comparison's table prints step 0 apart).

CSVs: ``training_curves.csv`` (one row per run and evaluation step: test
metrics and counters) and ``training_curves_grad.csv`` (one row per run and
measured step: step, phase, gradient error).

Checked on the plotted data (a violation is a bug report, not a figure): the
full-softmax miner's gradient error is exactly 0 at every measured step; each
run's last curve point equals its reported final metrics; the summary's
per-miner means equal the mean of the plotted final points, and its
per-phase gradient errors equal those recomputed from the gradient CSV; both
CSVs read back equal the JSON.
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
COLUMNS = ("miner", "seed", "step", "target_rows", "logits", "loss", "recall@1", "recall@10", "recall@100")
#: Columns of the gradient CSV (one row per run and measured step; phase = step mod R).
GRAD_COLUMNS = ("miner", "seed", "step", "phase", "grad_error")


def _load_or_run(out_dir: Path, quick: bool, source: Path | None) -> tuple[dict[str, Any], Path]:
    """The comparison to plot and the JSON file it lives in."""
    for path in ([source] if source is not None else [out_dir / "compare.json"]):
        if path.exists():
            result = json.loads(path.read_text())
            if any("grad_phase" not in r.get("curve", {}) for r in result.get("runs", [])):
                raise ValueError(f"source: {path} was written by an older `compare` (no gradient error per phase); "
                                 "run `python -m reference compare` again")
            return result, path
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
        for i, step in enumerate(c["step"]):
            cols["miner"].append(r["miner"])
            cols["seed"].append(r["seed"])
            cols["step"].append(step)
            for k in ("target_rows", "logits", *T.METRICS):
                cols[k].append(c[k][i])
    return cols


def _grad_rows(result: dict[str, Any]) -> dict[str, list]:
    """The gradient CSV's columns: every run's measured steps, their phase and gradient error."""
    cols: dict[str, list] = {c: [] for c in GRAD_COLUMNS}
    for r in result["runs"]:
        c = r["curve"]
        cols["miner"] += [r["miner"]] * len(c["grad_step"])
        cols["seed"] += [r["seed"]] * len(c["grad_step"])
        cols["step"] += list(c["grad_step"])
        cols["phase"] += list(c["grad_phase"])
        cols["grad_error"] += [float(v) for v in c["grad_error"]]
    return cols


def _phase_means(grad: dict[str, list], miner: str, seed: int, R: int) -> np.ndarray:
    """(R,) one run's mean gradient error at each phase t mod R (NaN for a phase it never measured)."""
    sel = [i for i, (m, s) in enumerate(zip(grad["miner"], grad["seed"])) if m == miner and s == seed]
    ph = np.asarray([grad["phase"][i] for i in sel], dtype=np.int64)
    err = np.asarray([grad["grad_error"][i] for i in sel], dtype=np.float64)
    counts = np.bincount(ph, minlength=R).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.bincount(ph, weights=err, minlength=R) / counts


def _check(result: dict[str, Any], csv_path: Path, cols: dict[str, list], grad_path: Path,
           grad: dict[str, list]) -> None:
    """Assert the statements of the module docstring on the plotted data."""
    runs = result["runs"]
    R = result["config"]["refresh_every"]
    for r in runs:
        if r["miner"] == "full":
            assert all(e == 0.0 for e in r["curve"]["grad_error"]), f"full softmax: gradient error {r['curve']['grad_error']}"
        assert r["curve"]["grad_phase"] == [t % R for t in r["curve"]["grad_step"]], f"{r['miner']}: phases"
        for k in T.METRICS:
            assert r["curve"][k][-1] == r["final"][k], f"{r['miner']} seed {r['seed']}: last {k} point != final"
    for m, e in result["summary"]["per_miner"].items():
        finals = [r["final"]["loss"] for r in runs if r["miner"] == m]
        assert np.isclose(e["loss"]["mean"], np.mean(finals), rtol=1e-12), f"{m}: summary loss mean"
        phases = np.array([_phase_means(grad, m, s, R) for s in result["seeds"]]).mean(axis=0)
        summary = np.array([np.nan if v is None else v for v in e["grad_error_by_phase"]["mean"]])
        assert np.allclose(phases[: summary.size], summary, rtol=1e-12, atol=0.0, equal_nan=True), \
            f"{m}: summary gradient error by phase"
    with open(csv_path, newline="") as fh:
        back = list(csv.DictReader(fh))
    assert len(back) == len(cols["step"]), "CSV row count"
    for i, row in enumerate(back):
        assert row["miner"] == cols["miner"][i] and int(row["step"]) == cols["step"][i]
        for k in T.METRICS:
            assert float(row[k]) == float(cols[k][i]), f"CSV row {i} column {k}: {row[k]} != {cols[k][i]}"
    with open(grad_path, newline="") as fh:
        back = list(csv.DictReader(fh))
    assert len(back) == len(grad["step"]), "gradient CSV row count"
    for i, row in enumerate(back):
        assert (row["miner"], int(row["seed"]), int(row["step"]), int(row["phase"])) == (
            grad["miner"][i], grad["seed"][i], grad["step"][i], grad["phase"][i]), f"gradient CSV row {i}"
        assert float(row["grad_error"]) == grad["grad_error"][i], f"gradient CSV row {i}: grad_error"


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
        The PNG, the two CSVs and the JSON the numbers come from.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result, json_path = _load_or_run(out_dir, quick, None if source is None else Path(source))
    cols, grad = _rows(result), _grad_rows(result)
    csv_path = write_csv(out_dir / "training_curves.csv", cols)
    grad_path = write_csv(out_dir / "training_curves_grad.csv", grad)
    _check(result, csv_path, cols, grad_path, grad)

    miners, seeds = result["miners"], result["seeds"]
    cfg = result["config"]
    by = {(r["miner"], r["seed"]): r for r in result["runs"]}
    R = cfg["refresh_every"]
    fig, axes = plt.subplots(1, 5, figsize=(24, 4.4))
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
            band(axes[3], gs, np.array([by[(m, s)]["curve"]["grad_error"] for s in seeds]), color, m)
            per_seed = np.array([_phase_means(grad, m, s, R) for s in seeds])
            band(axes[4], np.arange(R), per_seed, color, m, marker="o", ms=2)
    axes[0].set(xlabel="training step", ylabel="full-softmax test loss", title="test loss")
    axes[1].set(xlabel="training step", ylabel="loss(miner) - loss(full)", title="test-loss gap to full softmax")
    axes[1].axhline(0.0, color="k", lw=0.5)
    axes[2].set(xlabel="training step", ylabel="test recall@10", title="recall@10")
    axes[3].set(xlabel="training step", ylabel="||g - g*|| / ||g*||", yscale="log",
                title=f"training-gradient error vs full softmax (every {cfg['grad_every']} step(s))")
    for t in range(0, cfg["steps"], R):
        axes[3].axvline(t, color="k", lw=0.3, alpha=0.4)  # refreshes of the stale caches
    axes[4].set(xlabel=f"steps since the last refresh (t mod R, R = {R})", ylabel="||g - g*|| / ||g*||",
                yscale="log", title="gradient error vs staleness (mean over periods)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"N = {cfg['n_targets']}, {cfg['steps']} steps, B = {cfg['batch_size']}, n = {cfg['negatives']}, "
                 f"seeds {seeds} (line: mean, band: min-max) -- {json_path.name}", fontsize=10)
    png = save(fig, out_dir / "training_curves.png")
    return [png, csv_path, grad_path, json_path]
