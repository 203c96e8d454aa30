"""Smoke tests of figures/fig_training_curves.py: PNG, CSV and JSON written and consistent."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest

from figures import fig_training_curves as fig
from reference import train as T
from reference.jsonio import write_json


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_quick_figure_runs_its_own_comparison(tmp_path):
    png, csv_path, grad_path, json_path = fig.make(tmp_path, quick=True)
    assert png.stat().st_size > 0 and png.suffix == ".png"
    result = json.loads(json_path.read_text())
    rows, grad_rows = read_csv(csv_path), read_csv(grad_path)
    assert set(result["miners"]) == {r["miner"] for r in rows} == {r["miner"] for r in grad_rows}
    R, steps = result["config"]["refresh_every"], result["config"]["steps"]
    # every run's curve appears in the CSVs, value for value; the gradient error at every step
    for r in result["runs"]:
        mine = [row for row in rows if row["miner"] == r["miner"] and int(row["seed"]) == r["seed"]]
        assert [int(row["step"]) for row in mine] == r["curve"]["step"]
        assert [float(row["loss"]) for row in mine] == r["curve"]["loss"]
        assert float(mine[-1]["recall@10"]) == r["final"]["recall@10"]
        grads = [row for row in grad_rows if row["miner"] == r["miner"] and int(row["seed"]) == r["seed"]]
        assert [int(row["step"]) for row in grads] == list(range(steps))
        assert [int(row["phase"]) for row in grads] == [t % R for t in range(steps)]
        assert [float(row["grad_error"]) for row in grads] == r["curve"]["grad_error"]


def test_figure_reads_the_json_written_by_compare(tmp_path):
    cfg = T.TrainConfig(n_targets=120, dim=8, queries_per_target=2, hidden=(8,), out_dim=8, steps=4,
                        batch_size=8, negatives=3, refresh_every=2, cache_size=20, landmarks=10, eval_every=2)
    result = T.compare(cfg, ["full", "uniform"], seeds=[0, 1])
    write_json(tmp_path / "compare.json", result)
    png, csv_path, grad_path, json_path = fig.make(tmp_path, quick=True)
    assert json_path == tmp_path / "compare.json"
    rows = read_csv(csv_path)
    assert len(rows) == 2 * 2 * 3  # miners x seeds x evaluation steps (0, 2, 4)
    assert [float(r["loss"]) for r in rows if r["miner"] == "uniform" and r["seed"] == "1"] == next(
        r["curve"]["loss"] for r in result["runs"] if r["miner"] == "uniform" and r["seed"] == 1)


def test_figure_refuses_inconsistent_data(tmp_path):
    """The checks are real: a non-zero full-softmax gradient error is reported, not plotted."""
    cfg = T.TrainConfig(n_targets=120, dim=8, queries_per_target=2, hidden=(8,), out_dim=8, steps=2,
                        batch_size=8, negatives=3, refresh_every=2, cache_size=20, landmarks=10, eval_every=1)
    result = T.compare(cfg, ["full", "uniform"], seeds=[0])
    result["runs"][0]["curve"]["grad_error"][0] = 1e-3
    path = tmp_path / "tampered.json"
    write_json(path, result)
    with pytest.raises(AssertionError, match="full softmax"):
        fig.make(tmp_path, source=path)
    with pytest.raises(ValueError, match="source"):
        fig.make(tmp_path, source=tmp_path / "missing.json")
    old = json.loads(path.read_text())  # a JSON of the earlier compare, which measured only at refresh steps
    for r in old["runs"]:
        del r["curve"]["grad_phase"]
    write_json(path, old)
    with pytest.raises(ValueError, match="written by an older `compare`"):
        fig.make(tmp_path, source=path)
    bad = dataclasses.replace(cfg)  # summary mean that disagrees with the runs
    result = T.compare(bad, ["full"], seeds=[0])
    result["summary"]["per_miner"]["full"]["loss"]["mean"] += 0.1
    write_json(path, result)
    with pytest.raises(AssertionError, match="summary"):
        fig.make(tmp_path, source=path)
    result = T.compare(cfg, ["full", "uniform"], seeds=[0])  # a per-phase mean that is not the runs'
    result["summary"]["per_miner"]["uniform"]["grad_error_by_phase"]["mean"][1] *= 1.01
    write_json(path, result)
    with pytest.raises(AssertionError, match="uniform: summary gradient error by phase"):
        fig.make(tmp_path, source=path)
