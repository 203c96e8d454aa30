"""Tests of ``python -m reference bench`` (reference/bench.py) and of memory-mapped targets.

The benchmark's speed targets are *measured* by the benchmark, not asserted
here: these tests check that the table and JSON report what they claim, that
the brute-force baselines are exact, that the benchmark's own verification
can fail, and that the tree and the samplers work from an ``np.memmap``.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import pytest
from scipy.special import logsumexp

from reference import bench
from reference.cli import main
from reference.sampling import rejection_sample, topk
from reference.stats import g_test
from reference.tree import Tree


#: A benchmark of a fraction of a second (two small N, clustered data only).
TINY = dict(sizes=(400, 800), data=("clustered",), queries=20, repeats=1, calibration_queries=8, perplexity=50.0)


def _ids_sorted_by_logit(A: np.ndarray, k: int) -> np.ndarray:
    """Reference top-k by a full sort on (-logit, id)."""
    ids = np.arange(A.shape[1])
    return np.stack([np.lexsort((ids, -row))[:k] for row in A])


# --------------------------------------------------------------------------
# The command: table and JSON
# --------------------------------------------------------------------------

def test_quick_run_prints_table_and_writes_consistent_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--quiet", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    res = json.loads(path.read_text())
    cfg = res["config"]
    assert cfg["sizes"] == list(bench.QUICK["sizes"]) and cfg["data"] == ["clustered", "isotropic"]
    assert cfg["k"] == 64 and cfg["queries"] == bench.QUICK["queries"]
    assert len(res["runs"]) == 2 * len(bench.QUICK["sizes"])
    for line in ("== clustered ==", "== isotropic ==", "== targets (clustered data, N = 10000",
                 "verification: tree top-k == brute-force top-k and sampled ids valid on every run: yes"):
        assert line in out, out
    for r in res["runs"]:
        assert r["n"] in bench.QUICK["sizes"]
        # beta calibrated: bisection stops within 1% of the target perplexity (calibrate_beta's rtol)
        assert r["beta"] > 0 and abs(r["perplexity_calibration"] / cfg["perplexity"] - 1) <= 0.01
        b = r["build"]
        assert b["seconds"] == min(b["runs"]) > 0 and b["points_bytes"] == r["n"] * 64 * 8
        assert b["peak_bytes"] >= b["points_bytes"]  # the input points are live during the build
        assert b["memory_budget_bytes"] == 3 * b["points_bytes"] + 2**30
        s, t = r["sample"], r["topk"]
        assert s["ids_valid"] and s["distribution_ok"]
        assert t["agree"] and t["rows_equal"] == t["rows"] == t["queries_timed"] == cfg["queries"]
        for o in (s, t):
            c = o["counters"]
            assert o["logits_per_query"] == (c["node_logits"] + c["target_logits"]) / o["queries_timed"]
            assert o["fraction"] == pytest.approx(o["logits_per_query"] / r["n"], rel=1e-12)
            assert o["tree_per_query"] == pytest.approx(np.median(o["tree_runs"]) / o["queries_timed"], rel=1e-12)
            assert o["brute_per_query"] == pytest.approx(np.median(o["brute_runs"]) / o["brute_queries"], rel=1e-12)
            assert o["speedup"] == pytest.approx(o["brute_per_query"] / o["tree_per_query"], rel=1e-12)
            # cost per evaluated logit: the tree's over its logits per query, brute force's over N
            assert o["tree_ns_per_logit"] == pytest.approx(1e9 * o["tree_per_query"] / o["logits_per_query"], rel=1e-12)
            assert o["brute_ns_per_logit"] == pytest.approx(1e9 * o["brute_per_query"] / r["n"], rel=1e-12)
            assert o["logit_cost_ratio"] == pytest.approx(o["tree_ns_per_logit"] / o["brute_ns_per_logit"], rel=1e-12)
            assert len(o["tree_runs"]) == len(o["brute_runs"]) == cfg["repeats"]
        assert s["counters"]["accepted"] >= cfg["negatives"] * s["queries_timed"]
        # every target row of the table shows its N, both operations and the check
        assert f"{r['n']:>9} sample " in out and f"{r['n']:>9} top-10 " in out
    for data in cfg["data"]:
        rr = [r for r in res["runs"] if r["data"] == data]
        x = np.log([r["n"] for r in rr])
        for op in ("sample", "topk"):
            slope = np.polyfit(x, np.log([r[op]["logits_per_query"] for r in rr]), 1)[0]
            assert res["fits"][data][op] == pytest.approx(slope, rel=1e-12)
    assert [t["name"] for t in res["targets"]] == list(bench.TARGETS)
    for t in res["targets"]:
        want = t["measured"] >= t["threshold"] if t["comparison"] == ">=" else t["measured"] <= t["threshold"]
        assert t["status"] == ("PASS" if want else "MISS")
        assert t["n"] == 10000
        line = next(ln for ln in out.splitlines() if t["description"] in ln)
        assert line.rstrip().endswith(t["status"])
    assert res["verified"] is True and res["machine"]["cpus"] >= 1
    assert res["machine"]["processor"] == bench.processor_model()
    assert f"machine: {res['machine']['processor']}, " in out
    iso = max((r for r in res["runs"] if r["data"] == "isotropic"), key=lambda r: r["n"])
    for op in ("sample", "topk"):
        t = next(t for t in res["targets"] if t["name"] == f"isotropic_{op}_time")
        assert t["data"] == "isotropic" and t["n"] == iso["n"]
        assert t["measured"] == pytest.approx(1.0 / iso[op]["speedup"], rel=1e-12)


def test_quick_without_json_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = bench.BenchConfig(sizes=(300, 600), data=("isotropic",), queries=10, repeats=1, calibration_queries=4,
                            perplexity=50.0, quick=True)
    result = bench.run_bench(cfg)
    assert result["targets"] == []  # targets are checked on the clustered data only
    assert "== targets" not in bench.format_report(result)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "0"], "argument --sizes: expected an integer >= 2 such as 1e5, got '0'"),
    (["--sizes", "1e3", "2.5"], "argument --sizes: expected an integer >= 2 such as 1e5, got '2.5'"),
    (["--sizes", "many"], "argument --sizes: expected a number such as 1e5, got 'many'"),
    (["--quick", "--perplexity", "5000"], "perplexity: expected a value in (1, smallest N = 1000)"),
    (["--quick", "--k", "0"], "k: expected an integer >= 1"),
    (["--quick", "--topk", "2000"], "topk: expected an integer <= 1000"),
    (["--quick", "--queries", "0"], "queries: expected an integer >= 1"),
    (["--data", "gaussian"], "invalid choice"),
    (["--depth", "0"], "argument --depth: expected a positive integer or 'auto', got '0'"),
    (["--depth", "deep"], "argument --depth: expected a positive integer or 'auto', got 'deep'"),
    (["--preset", "paper-scale", "--quick"], "--preset: expected either --quick or --preset, got both"),
    (["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
])
def test_bad_options_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_auto_depth_grows_the_cluster_hierarchy_with_n():
    assert [bench.cluster_depth("auto", n) for n in (10_000, 100_000, 1_000_000)] == [3, 4, 5]
    assert bench.cluster_depth(3, 10**6) == 3
    result = bench.run_bench(bench.BenchConfig(**{**TINY, "depth": "auto"}))
    # round(log_8(400 / 25)) = 1, round(log_8(800 / 25)) = 2
    assert [r["cluster_depth"] for r in result["runs"]] == [1, 2]
    assert "== clustered ==  (make_targets, cluster depth 1/2)" in bench.format_report(result)
    with pytest.raises(ValueError, match="depth: expected an integer >= 1"):
        bench.BenchConfig(depth=0).validated()


# --------------------------------------------------------------------------
# The benchmark's own checks can fail
# --------------------------------------------------------------------------

def test_wrong_tree_topk_is_reported(monkeypatch):
    def off_by_one(tree, Q, k, return_counters=False, block=None):
        ids, logits, c = topk(tree, Q, k + 1, return_counters=True, block=block)
        return ids[:, 1:], logits[:, 1:], c        # drops the best target

    monkeypatch.setattr(bench, "topk", off_by_one)
    result = bench.run_bench(bench.BenchConfig(**TINY))
    assert result["verified"] is False
    assert all(not r["topk"]["agree"] and r["topk"]["rows_equal"] == 0 for r in result["runs"])
    report = bench.format_report(result)
    assert "DISAGREE" in report and "sampled ids valid on every run: NO" in report


def test_inexact_sampler_is_caught_by_the_mean_log_p_check(monkeypatch):
    def uniform(tree, Q, n, rng, tol=None, block=None):
        ids, c = rejection_sample(tree, Q, n, rng, block=block)
        return rng.integers(0, tree.n_live, size=ids.shape), c

    monkeypatch.setattr(bench, "rejection_sample", uniform)
    result = bench.run_bench(bench.BenchConfig(**TINY))
    # Uniform draws have a far lower mean log P than softmax draws at perplexity 50 of 400-800:
    # |z| is in the tens, against the |z| <= 5 threshold (false alarm ~6e-7 for an exact sampler).
    assert all(r["sample"]["ids_valid"] and abs(r["sample"]["z"]) > 5 for r in result["runs"])
    assert result["distribution_ok"] is False


# --------------------------------------------------------------------------
# Timing summaries and the machine record
# --------------------------------------------------------------------------

def test_timing_summary_is_median_and_range_over_interleaved_repeats():
    """Five repeats, the tree on 10 queries and brute force on 40, N = 1000, 50 logits per query:
    the medians give the times per query, the speed-up and the cost ratio; the ranges pair
    tree and brute force repeat by repeat (a fast tree repeat is not paired with a slow brute
    force one). Exact arithmetic on these values: 1e-12 relative."""
    tree = [1.0, 3.0, 2.0, 10.0, 2.5]          # seconds for 10 queries
    brute = [40.0, 60.0, 40.0, 100.0, 50.0]    # seconds for 40 queries
    out = bench.timing_summary(tree, 10, brute, 40, 50.0, 1000)
    assert out["tree_per_query"] == pytest.approx(0.25) and out["brute_per_query"] == pytest.approx(1.25)
    assert out["tree_per_query_range"] == pytest.approx([0.1, 1.0])
    assert out["brute_per_query_range"] == pytest.approx([1.0, 2.5])
    assert out["speedup"] == pytest.approx(5.0)
    # per repeat: brute / tree per query = 10, 5, 5, 2.5, 5 (not max brute / min tree = 25)
    assert out["speedup_range"] == pytest.approx([2.5, 10.0])
    assert out["tree_ns_per_logit"] == pytest.approx(1e9 * 0.25 / 50)
    assert out["brute_ns_per_logit"] == pytest.approx(1e9 * 1.25 / 1000)
    assert out["logit_cost_ratio"] == pytest.approx(4.0)               # 5e-3 / 1.25e-3
    assert out["logit_cost_ratio_range"] == pytest.approx([2.0, 8.0])  # 20 / speed-up, repeat by repeat
    assert out["tree_runs"] == tree and out["brute_runs"] == brute


def test_processor_model_reads_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC 7B14\n")
    assert bench.processor_model(str(info)) == "AMD EPYC 7B13"          # the first processor's name
    info.write_text("processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
                    "stepping\t: 0\n\nprocessor\t: 1\ncpu family\t: 23\nmodel\t\t: 49\nmodel name\t: AMD EPYC\n")
    assert bench.processor_model(str(info)) == "AMD EPYC (family 25, model 17)"
    info.write_text("processor\t: 0\nmodel name\t:\n")  # empty: the platform's answer
    assert bench.processor_model(str(info)) == (bench.platform.processor() or "unknown")
    assert bench.processor_model(str(tmp_path / "missing")) == (bench.platform.processor() or "unknown")


def test_memory_bound_shrinks_the_query_block_below_n_logits_only(monkeypatch):
    """Where the pilot's logits per query L, below N, would fill more than ENTRY_CAP entries in one
    block of 512 queries, the tree runs in blocks of ENTRY_CAP // L queries and every query is
    timed; at L >= N (every target scored: the dense fallback, which holds a block of logits
    rather than entries) the block stays; a run past the time budget is cut, for time only."""
    Q = np.zeros((2000, 4))
    monkeypatch.setattr(bench, "ENTRY_CAP", 1000 * bench.sampling._QUERY_BLOCK)

    def op_with(L, seconds=0.0):
        def op(Qb):
            time.sleep(seconds * Qb.shape[0])
            return {"node_logits": 0, "target_logits": int(L) * Qb.shape[0]}
        return op

    assert bench._queries_to_time(op_with(1000), Q, lambda c: c, 2000) == (2000, None, None)  # 512 * 1000 = cap
    assert bench._queries_to_time(op_with(1001), Q, lambda c: c, 2000) == (
        2000, None, bench.ENTRY_CAP // 1001)
    assert bench._queries_to_time(op_with(1500), Q, lambda c: c, 1500) == (2000, None, None)   # L >= N
    monkeypatch.setattr(bench, "BUDGET_SECONDS", 0.5)
    m, why, block = bench._queries_to_time(op_with(10, seconds=0.01), Q, lambda c: c, 2000)
    assert why == "time" and bench.PILOT_QUERIES <= m <= 50 and block is None


def test_tiled_brute_force_is_the_single_product():
    """Targets in tiles (N beyond ~1e6): top-k identical to the one-product top-k for tiles of
    1, 7, 64 and 499 targets (ties by smaller id across tile borders included); the tiled sampler
    draws the softmax (G-test, false-alarm rate 1e-6) and its log Z is logsumexp to 1e-12; the
    streamed perplexity equals perplexity() up to the rounding of its sums (one tile: bit for bit); the default tile at N = 1e6 and 2e7."""
    rng = np.random.default_rng(5)
    Z = rng.integers(-3, 4, size=(500, 3)).astype(float)   # small integers: exact logits, many exact ties
    Q = rng.integers(-3, 4, size=(9, 3)).astype(float)
    want_ids, want_vals = bench.brute_force_topk(Z, Q, 12)
    np.testing.assert_array_equal(want_ids, _ids_sorted_by_logit(Q @ Z.T, 12))
    for tile in (1, 7, 64, 499):
        ids, vals = bench.brute_force_topk(Z, Q, 12, block=4, tile=tile)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(vals, want_vals)
    q = np.array([[2.0, -1.0, 0.5]])
    Zs = rng.standard_normal((12, 3))
    a = (q @ Zs.T)[0]
    ids, log_z = bench.brute_force_sample(Zs, q, 200_000, np.random.default_rng(2), tile=5)  # tiles 5, 5, 2
    assert log_z[0] == pytest.approx(logsumexp(a), rel=1e-12)
    assert g_test(np.bincount(ids[0], minlength=12), np.exp(a - logsumexp(a))).p_value > 1e-6
    one_ids, one_z = bench.brute_force_sample(Zs, q, 50, np.random.default_rng(3))
    same_ids, same_z = bench.brute_force_sample(Zs, q, 50, np.random.default_rng(3), tile=12)
    np.testing.assert_array_equal(one_ids, same_ids)          # one tile: the single product, draw for draw
    big = 40 * rng.standard_normal((7, 3))                    # perplexities from ~1 to ~N
    A = big @ Z.T
    # log perplexity H = log Z - E_P[a] by two summation orders over N terms of size <= max|a|:
    # they may differ by N eps max|a| (the recursive-summation bound), not more
    err = np.abs(np.log(bench.streamed_perplexity(Z, big, tile=37)) - np.log(bench.perplexity(A)))
    assert np.all(err <= Z.shape[0] * np.finfo(float).eps * np.abs(A).max(axis=1))
    assert np.all(bench.streamed_perplexity(Z, big, tile=500) == bench.perplexity(A))
    assert bench._tiles(bench._query_block(10**6), None) >= 10**6     # one tile up to ~1e6
    assert bench._query_block(2 * 10**7) == bench.BRUTE_MIN_QUERIES
    assert bench._tiles(32, None) * 32 * 8 == bench.BRUTE_BLOCK_BYTES


def test_paper_scale_targets_and_preset(monkeypatch):
    """At N >= LARGE_N the targets of TARGETS_LARGE are judged for each clustered data set, memory
    against 2.5 x points + 1 GiB; the preset fills the options it names, explicit options win."""
    assert bench._memory_budget(bench.LARGE_N, 10 * 2**30) == 26 * 2**30
    assert bench._memory_budget(bench.LARGE_N - 1, 10 * 2**30) == 31 * 2**30
    monkeypatch.setattr(bench, "LARGE_N", 800)    # TINY's sizes reach 800: judged as the paper's scale
    result = bench.run_bench(bench.BenchConfig(**{**TINY, "data": ("clustered", "clustered_auto")}))
    rows = result["targets"]
    assert [t["name"] for t in rows] == 2 * list(bench.TARGETS_LARGE)
    assert [t["table"] for t in rows] == ["clustered"] * 7 + ["clustered_auto"] * 7
    for t in rows:
        run = next(r for r in result["runs"] if r["data"] == t["table"] and r["n"] == 800)
        if t["name"] == "query_memory":
            assert t["measured"] == run["query_phase"]["peak_rss_bytes"] / (2.5 * 800 * 64 * 8 + 2**30)
        if t["name"] == "topk_speedup":
            assert t["measured"] == run["topk"]["speedup"]
            assert t["status"] == ("PASS" if t["measured"] >= 30 else "MISS")
    report = bench.format_report(result)
    assert "== targets (clustered_auto data, N = 800)" in report and "query-phase peak memory" in report
    depths = {r["data"]: r["cluster_depth"] for r in result["runs"] if r["n"] == 800}
    assert depths == {"clustered": 3, "clustered_auto": bench.cluster_depth("auto", 800)}
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    cfg = bench.config_from_args(parser.parse_args(["--preset", "paper-scale"]))
    assert (cfg.sizes, cfg.k, cfg.data, cfg.queries, cfg.repeats) == (
        (10_000, 100_000, 1_000_000, 20_000_000), 32, ("clustered", "clustered_auto"), 200, 3)
    cfg = bench.config_from_args(parser.parse_args(["--preset", "paper-scale", "--k", "8", "--data", "both"]))
    assert (cfg.k, cfg.data) == (8, ("clustered", "isotropic"))


# --------------------------------------------------------------------------
# Brute-force baselines and the temperature calibration
# --------------------------------------------------------------------------

def test_brute_force_topk_equals_full_sort_across_blocks():
    rng = np.random.default_rng(0)
    Z, Q = rng.standard_normal((500, 8)), rng.standard_normal((7, 8))
    ids, vals = bench.brute_force_topk(Z, Q, 10, block=3)  # blocks 3, 3, 1
    A = Q @ Z.T
    np.testing.assert_array_equal(ids, _ids_sorted_by_logit(A, 10))
    # 1e-12 relative: the same matrix product, gathered
    np.testing.assert_allclose(vals, np.take_along_axis(A, ids, axis=1), rtol=1e-12)


def test_brute_force_topk_orders_ties_by_smaller_id():
    Z = np.array([[1.0], [3.0], [3.0], [2.0], [3.0]])
    ids, vals = bench.brute_force_topk(Z, np.ones((1, 1)), 3)
    np.testing.assert_array_equal(ids[0], [1, 2, 4])
    np.testing.assert_array_equal(vals[0], [3.0, 3.0, 3.0])
    # Many ties among the k best, and across the k-th place: exactly the sorted order
    # on (-logit, id), so of the targets tied at the k-th logit the smallest ids are kept.
    Z = np.random.default_rng(0).integers(0, 4, size=(200, 1)).astype(float)
    q = np.ones((1, 1))
    threes = np.flatnonzero(Z[:, 0] == 3)
    twos = np.flatnonzero(Z[:, 0] == 2)
    for k in (threes.size, threes.size + 5, 7):   # no tie across the k-th place, then two with one
        ids, _ = bench.brute_force_topk(Z, q, k, block=1)
        np.testing.assert_array_equal(ids[0], np.concatenate([threes, twos])[:k])
        np.testing.assert_array_equal(ids, _ids_sorted_by_logit(q @ Z.T, k))


def test_brute_force_sample_is_the_softmax():
    """G-test of 200k draws against the softmax, failure at p < 1e-6 (false-alarm rate 1e-6)."""
    rng = np.random.default_rng(1)
    Z = rng.standard_normal((12, 3))
    q = np.array([[2.0, -1.0, 0.5]])
    ids, log_z = bench.brute_force_sample(Z, q, 200_000, np.random.default_rng(2))
    a = (q @ Z.T)[0]
    p = np.exp(a - logsumexp(a))
    # 1e-12: logsumexp of the same 12 logits by two summation orders
    assert log_z[0] == pytest.approx(logsumexp(a), rel=1e-12)
    assert g_test(np.bincount(ids[0], minlength=12), p).p_value > 1e-6


def test_brute_force_sample_blocks_and_extreme_logits():
    Z = np.array([[0.0], [1.0], [-1.0]])
    Q = np.array([[1e4], [-1e4], [0.0], [1e4], [-1e4]])  # logits of magnitude 1e4: log-space sums stay finite
    ids, log_z = bench.brute_force_sample(Z, Q, 50, np.random.default_rng(0), block=2)
    assert np.all(ids[[0, 3]] == 1) and np.all(ids[[1, 4]] == 2)
    assert set(np.unique(ids[2])) <= {0, 1, 2}
    # 1e-12 relative: log Z = 1e4 + log(1 + e^-1e4 + e^-2e4) = 1e4 exactly in float64
    np.testing.assert_allclose(log_z[[0, 1, 3, 4]], 1e4, rtol=1e-12)
    assert log_z[2] == pytest.approx(math.log(3.0), rel=1e-12)


def test_calibrate_beta_hits_the_perplexity():
    Z = bench.make_targets(3000, 16, seed=0)
    U = bench.make_queries(bench.make_targets(20, 16, seed=1), 1.0)
    beta, ppl = bench.calibrate_beta(Z, U, 200.0, rtol=0.005)
    assert abs(ppl / 200.0 - 1) <= 0.005
    # 1e-9: the same computation repeated, now through perplexity() on the full block
    assert bench.perplexity(beta * (U @ Z.T)).mean() == pytest.approx(ppl, rel=1e-9)
    assert bench.perplexity(2 * beta * (U @ Z.T)).mean() < ppl  # monotone in beta
    with pytest.raises(ValueError, match="target: expected a perplexity in"):
        bench.calibrate_beta(Z, U, 3000.0)
    with pytest.raises(ValueError, match="queries: expected shape"):
        bench.calibrate_beta(Z, U[:, :3], 100.0)


def test_perplexity_of_uniform_and_one_hot():
    # 1e-12: exp(log 50) and exp(0) in float64
    assert bench.perplexity(np.zeros((1, 50)))[0] == pytest.approx(50.0, rel=1e-12)
    assert bench.perplexity(np.array([[0.0, -1e4, -1e4]]))[0] == pytest.approx(1.0, rel=1e-12)


# --------------------------------------------------------------------------
# Memory-mapped targets
# --------------------------------------------------------------------------

def test_tree_and_samplers_work_from_a_memmap(tmp_path):
    Z = bench.make_targets(3000, 16, seed=3)
    path = tmp_path / "z.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=Z.shape)
    mm[:] = Z
    mm.flush()
    del mm
    points = np.load(path, mmap_mode="r")
    assert isinstance(points, np.memmap) and not points.flags.writeable
    tree = Tree.build(points, seed=0)
    tree.check_invariants()
    ref = Tree.build(Z, seed=0)
    np.testing.assert_array_equal(tree.order, ref.order)  # same seed, same data: the same tree
    np.testing.assert_array_equal(tree.radius, ref.radius)
    Q = 20.0 * bench.make_queries(bench.make_targets(30, 16, seed=4), 1.0)
    ids, logits = topk(tree, Q, 5)
    b_ids, b_logits = bench.brute_force_topk(points, Q, 5)
    np.testing.assert_array_equal(ids, b_ids)
    s_ids, counters = rejection_sample(tree, Q, 8, np.random.default_rng(0))
    assert s_ids.shape == (30, 8) and s_ids.min() >= 0 and s_ids.max() < 3000
    np.testing.assert_array_equal(s_ids, rejection_sample(ref, Q, 8, np.random.default_rng(0))[0])
    np.testing.assert_array_equal(points, Z)  # the memmap was only read


def test_bench_runs_from_memmap_files(tmp_path):
    cfg = bench.BenchConfig(**{**TINY, "sizes": (500,)}, memmap=str(tmp_path / "mm"))
    result = bench.run_bench(cfg)
    f = tmp_path / "mm" / "targets_clustered_n500_k64_seed0.npy"
    # the targets and the held-out query directions, generated straight into the file
    assert f.exists() and np.load(f, mmap_mode="r").shape == (500 + TINY["queries"], 64)
    r = result["runs"][0]
    assert result["verified"] and r["build"]["memmap"] is True
    # the tree was disk-backed (Tree.build's storage) and its files were removed after the run
    assert r["build"]["storage"] == str(tmp_path / "mm" / "tree_clustered_n500")
    assert not (tmp_path / "mm" / "tree_clustered_n500").exists()
    # on disk, only the traced (in-process) allocations count towards the build's memory
    assert r["build"]["peak_bytes"] == r["build"]["peak_traced_bytes"]
    in_ram = bench.run_bench(bench.BenchConfig(**{**TINY, "sizes": (500,)}))["runs"][0]
    assert r["beta"] == in_ram["beta"]  # same data, same calibration
    assert r["topk"]["counters"] == in_ram["topk"]["counters"]


def test_a_nested_phase_hides_no_peak_from_the_enclosing_one():
    """The query phase encloses the timed operations, each of which resets the peak RSS: the
    enclosing phase's peak still counts a 200 MB array that lived and died inside an earlier
    nested phase (it would be lost if a reset erased it)."""
    if bench._proc_status() is None or not bench._reset_rss_peak():
        pytest.skip("no /proc/self/status or clear_refs on this system")
    with bench._Peak(bench._rss_now()) as outer:
        with bench._Peak(bench._rss_now()) as inner:
            big = np.ones(25_000_000)                  # 200 MB, every page touched
            del big
        with bench._Peak(bench._rss_now()):
            pass
    assert inner.rss_peak >= 190e6
    assert outer.rss_peak >= inner.rss_peak
