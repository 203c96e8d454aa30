"""Smoke tests of figures/fig_scaling.py: PNG, CSV and JSON written and consistent."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest

from figures import fig_scaling as fig
from reference import bench
from reference.jsonio import write_json


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def tiny_result():
    return bench.run_bench(bench.BenchConfig(sizes=(400, 800, 1600), queries=15, repeats=1, calibration_queries=8,
                                             perplexity=50.0))


def test_quick_figure_runs_its_own_bench(tmp_path, monkeypatch):
    # The figure's own quick run, shrunk further to keep the suite fast (same code path).
    monkeypatch.setitem(fig.OWN_RUN, True, dict(sizes=(400, 800, 1600), queries=15, repeats=1,
                                                calibration_queries=8, perplexity=50.0))
    png, csv_path, json_path = fig.make(tmp_path, quick=True)
    assert png.stat().st_size > 0 and png.suffix == ".png"
    assert json_path == tmp_path / "scaling.json"
    result = json.loads(json_path.read_text())
    rows = read_csv(csv_path)
    assert len(rows) == len(result["runs"]) * 2 * 2  # runs x {sample, topk} x {tree, brute}
    for r in result["runs"]:
        mine = [row for row in rows if row["data"] == r["data"] and int(row["n"]) == r["n"]]
        brute = [row for row in mine if row["method"] == "brute"]
        assert all(float(row["logits_per_query"]) == r["n"] for row in brute)  # brute force evaluates N
        tree = {row["op"]: row for row in mine if row["method"] == "tree"}
        for op in ("sample", "topk"):
            assert float(tree[op]["logits_per_query"]) == r[op]["logits_per_query"]
            assert float(tree[op]["seconds_per_query"]) == r[op]["tree_per_query"]


def test_figure_reads_the_bench_json(tmp_path, tiny_result):
    write_json(tmp_path / "bench.json", tiny_result)
    png, csv_path, json_path = fig.make(tmp_path, quick=True)
    assert json_path == tmp_path / "bench.json"
    rows = read_csv(csv_path)
    assert len(rows) == 2 * 3 * 2 * 2  # data sets x sizes x operations x methods
    assert sorted({int(r["n"]) for r in rows}) == [400, 800, 1600]


def test_figure_refuses_inconsistent_data(tmp_path, tiny_result):
    bad = copy.deepcopy(tiny_result)
    bad["runs"][1]["topk"]["agree"] = False
    write_json(tmp_path / "bench.json", bad)
    with pytest.raises(AssertionError, match="tree top-k differs from brute force"):
        fig.make(tmp_path)
    bad = copy.deepcopy(tiny_result)
    bad["fits"]["clustered"]["sample"] = float(np.float64(bad["fits"]["clustered"]["sample"]) + 0.01)
    write_json(tmp_path / "bench.json", bad)
    with pytest.raises(AssertionError, match="clustered sample: exponent"):
        fig.make(tmp_path)
    with pytest.raises(ValueError, match="source: expected an existing JSON"):
        fig.make(tmp_path, source=tmp_path / "missing.json")


def test_figures_command_plots_a_given_bench_json(tmp_path, tiny_result, capsys):
    """``figures --only scaling --bench-json PATH`` plots that run without re-running it (the committed
    paper-scale JSON), its second exponent fit (N >= n_min) checked too; a missing file is refused."""
    from reference.cli import main

    res = copy.deepcopy(tiny_result)
    sub = [r for r in res["runs"] if r["data"] == "clustered" and r["n"] >= 800]
    res["fits"]["clustered"]["from_n"] = dict(n_min=800, **{
        op: float(np.polyfit(np.log([r["n"] for r in sub]), np.log([r[op]["logits_per_query"] for r in sub]), 1)[0])
        for op in ("sample", "topk")})
    src = tmp_path / "given.json"
    write_json(src, res)
    assert main(["figures", "--only", "scaling", "--out", str(tmp_path / "o"), "--bench-json", str(src)]) == 0
    assert f"scaling.csv, {src}" in capsys.readouterr().out
    assert not (tmp_path / "o" / "scaling.json").exists()
    res["fits"]["clustered"]["from_n"]["topk"] += 0.01
    write_json(src, res)
    with pytest.raises(AssertionError, match="clustered topk: exponent"):
        fig.make(tmp_path / "o", source=src)
    with pytest.raises(SystemExit) as exc:
        main(["figures", "--only", "scaling", "--out", str(tmp_path / "o"),
              "--bench-json", str(tmp_path / "missing.json")])
    assert exc.value.code == 2
    assert "--bench-json: expected an existing JSON file" in capsys.readouterr().err
