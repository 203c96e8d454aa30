"""Tests of reference/train.py: the training loop, its measurements, the comparison and resuming.

Bitwise statements (determinism, resume) are checked with ``==`` on every
number a run reports (only the wall-clock ``seconds`` may differ). The
gradient-error identity is checked to 1e-12 (a norm ratio of float64 sums).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reference import train as T
from reference.encoder import DualEncoder
from reference.miners import MINERS

CFG = T.TrainConfig(n_targets=150, dim=8, queries_per_target=2, hidden=(16,), out_dim=8, steps=12,
                    batch_size=16, negatives=4, refresh_every=5, cache_size=40, landmarks=12, eval_every=4)
REPO = Path(__file__).resolve().parents[1]


def strip_time(result):
    """A run's result without its wall-clock field."""
    return {k: v for k, v in result.items() if k != "seconds"}


@pytest.fixture(scope="module")
def data():
    return T.make_data(CFG)


# --------------------------------------------------------------------------- one run


def test_full_softmax_run_has_zero_gradient_error_and_exact_counters(data):
    r = T.train(CFG, "full", data=data)
    N, B, S = CFG.n_targets, CFG.batch_size, CFG.steps
    assert r["curve"]["grad_error"] == [0.0] * 3  # the training gradient *is* the full-softmax gradient
    assert r["curve"]["grad_step"] == [0, 4, 8]
    assert r["curve"]["step"] == [0, 4, 8, 12]
    assert r["counters"] == {"target_rows": S * N, "logits_mining": 0, "logits_loss": S * B * N}
    assert r["curve"]["target_rows"] == [0, 4 * N, 8 * N, 12 * N]
    assert r["final"] == {m: r["curve"][m][-1] for m in T.METRICS}
    assert len(r["train_loss"]) == S and all(math.isfinite(v) for v in r["train_loss"])
    assert r["curve"]["loss"][-1] < r["curve"]["loss"][0]  # it learns


def test_gradient_error_is_the_relative_distance_and_costs_no_counted_passes(data):
    model = DualEncoder(T._encoder_config(CFG, data), seed=1)
    x, pos = data.train_x[:10], data.train_pos[:10]
    _, exact = model.full_softmax_loss(x, pos, data.targets)
    delta = {k: np.full_like(v, 0.01) for k, v in exact.items()}
    rows = model.target_rows_encoded
    err = T.gradient_error(model, {k: exact[k] + delta[k] for k in exact}, x, pos, data.targets)
    assert model.target_rows_encoded == rows
    norm = lambda g: np.sqrt(sum(float(np.sum(v * v)) for v in g.values()))  # noqa: E731
    assert err == pytest.approx(norm(delta) / norm(exact), rel=1e-12)


@pytest.mark.parametrize("name", [m for m in MINERS if m != "full"])
def test_counters_of_each_miner(data, name):
    r = T.train(CFG, name, data=data)
    N, B, S, n, R, m = CFG.n_targets, CFG.batch_size, CFG.steps, CFG.negatives, CFG.refresh_every, CFG.landmarks
    c = r["counters"]
    assert c["logits_loss"] == S * B * (n + 1)
    loss_rows = (0, S * B * (n + 1))  # distinct rows of the sampled losses: at most B (n + 1) per step
    refreshes = -(-S // R)
    miner_rows = {"uniform": 0, "in_batch": 0, "brute_topk": S * N, "stale_topk": refreshes * N,
                  "neg_cache": CFG.cache_size + S * B, "tree_stale": refreshes * N,
                  "tree_nystrom": refreshes * N + (S - refreshes) * m}[name]
    assert miner_rows + loss_rows[0] < c["target_rows"] <= miner_rows + loss_rows[1]
    if name in ("brute_topk", "stale_topk"):
        assert c["logits_mining"] == S * B * N
    if name == "neg_cache":
        assert c["logits_mining"] == S * B * CFG.cache_size
    assert all(0 < e < 10 for e in r["curve"]["grad_error"])


@pytest.mark.parametrize("name", ["uniform", "neg_cache", "tree_stale", "tree_nystrom"])
def test_sampling_miners_use_the_logq_correction(data, name):
    """With many draws the corrected (P13) training gradient approaches the full-softmax one.

    At step 0 every cache equals the current encodings, and neg_cache holds
    all N targets (C = N), so each proposal covers every target and the
    self-normalised estimate is consistent: with n = 3000 draws over N = 150
    its relative error is about 1% (measured 0.008-0.013; the bound 0.1
    leaves a margin of 7x). Without the logQ correction the same draws give an error
    of 0.25-0.36 for the non-uniform proposals (for the uniform one log Q is
    a constant and the correction barely changes the gradient).
    """
    cfg = dataclasses.replace(CFG, steps=1, eval_every=1, negatives=3000, batch_size=8, cache_size=CFG.n_targets)
    r = T.train(cfg, name, data=data)
    assert r["curve"]["grad_error"][0] < 0.1


def test_runs_are_deterministic(data):
    for name in ("neg_cache", "tree_nystrom"):
        assert strip_time(T.train(CFG, name, data=data)) == strip_time(T.train(CFG, name, data=data))


def test_train_validates():
    with pytest.raises(ValueError, match="miner"):
        T.train(CFG, "oracle")
    with pytest.raises(ValueError, match="checkpoint"):
        T.train(CFG, "full", checkpoint_every=5)
    with pytest.raises(ValueError, match="negatives"):
        T.TrainConfig(n_targets=10, negatives=0)
    with pytest.raises(ValueError, match="lr"):
        T.TrainConfig(lr=0.0)


# --------------------------------------------------------------------------- resume


class Crash(Exception):
    pass


@pytest.mark.parametrize("name", list(MINERS))
def test_resume_after_a_crash_is_bitwise_identical(data, tmp_path, name):
    """Crash at step 7 (last checkpoint at step 4), resume: every reported number is identical.

    The checkpoint (4) is not a refresh step (R = 5), so the restored miner
    state (stale caches, trees, the negative cache) is what the resumed run uses.
    """
    reference = T.train(CFG, name, data=data)

    def crash(info):
        if info["step"] == 7:
            raise Crash

    ckpt = tmp_path / "run.ckpt.npz"
    with pytest.raises(Crash):
        T.train(CFG, name, data=data, checkpoint=ckpt, checkpoint_every=4, progress=crash)
    assert ckpt.exists()
    steps_seen = []
    resumed = T.train(CFG, name, data=data, checkpoint=ckpt, checkpoint_every=4, resume=True,
                      progress=lambda info: steps_seen.append(info["step"]))
    assert steps_seen[0] == 5  # it really continued from the checkpoint of step 4
    assert strip_time(resumed) == strip_time(reference)


def test_resume_refuses_a_checkpoint_of_another_budget(data, tmp_path):
    ckpt = tmp_path / "run.ckpt.npz"
    T.train(CFG, "uniform", data=data, checkpoint=ckpt, checkpoint_every=5)
    other = dataclasses.replace(CFG, lr=CFG.lr * 2)
    with pytest.raises(ValueError, match="checkpoint"):
        T.train(other, "uniform", data=data, checkpoint=ckpt, resume=True)


def test_checkpoints_are_persist_checkpoints(data, tmp_path):
    """``compare`` writes the package's one checkpoint format (``persist.save_checkpoint``, as ``demo``)."""
    from reference import persist

    ckpt = tmp_path / "run.ckpt.npz"
    T.train(CFG, "neg_cache", data=data, checkpoint=ckpt, checkpoint_every=5)
    ck = persist.load_checkpoint(ckpt)
    assert ck["step"] == 10 and persist.read_header(ckpt)["meta"]["step"] == 10
    assert ck["meta"] == {"command": "compare", "config": CFG.to_dict(), "miner": "neg_cache"}
    assert sorted(ck["rngs"]) == ["batch", "miner"] and sorted(ck["miner"]) == ["emb", "head", "ids"]
    assert ck["optimizer"]["step"] == 10 and len(ck["extra"]["history"]["train_loss"]) == 10


def test_resume_refuses_a_checkpoint_that_does_not_fit_naming_the_file(data, tmp_path):
    """A valid checkpoint of the right budget whose state does not fit (here the miner's) is refused."""
    from reference import persist

    ckpt = tmp_path / "run.ckpt.npz"
    T.train(CFG, "neg_cache", data=data, checkpoint=ckpt, checkpoint_every=5)
    ck = persist.load_checkpoint(ckpt)
    ck["miner"]["head"] = np.array(10**6)  # beyond the cache
    persist.save_checkpoint(ckpt, **{k: ck[k] for k in ("step", "params", "optimizer", "rngs", "miner", "extra")},
                            meta=ck["meta"])
    with pytest.raises(ValueError) as info:
        T.train(CFG, "neg_cache", data=data, checkpoint=ckpt, resume=True)
    assert str(info.value).startswith(f"{ckpt}: checkpoint does not fit this run (ValueError: state: ")
    demo_ckpt = tmp_path / "demo.ckpt.npz"  # a demo checkpoint: same format, another run
    persist.save_checkpoint(demo_ckpt, step=3, params=ck["params"], meta={"command": "demo", "config": {}})
    with pytest.raises(ValueError, match=re.escape(f"{demo_ckpt}: checkpoint of miner None")):
        T.train(CFG, "neg_cache", data=data, checkpoint=demo_ckpt, resume=True)


def test_compare_resume_after_sigkill_is_bitwise_identical(tmp_path):
    """``python -m reference compare`` killed by SIGKILL after a checkpoint, then ``--resume``."""
    args = ["--preset", "quick", "--miners", "neg_cache", "tree_nystrom", "--seeds", "0",
            "--steps", "40", "--checkpoint-every", "10", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "reference", "compare", *args]
    done = tmp_path / "a.json"
    subprocess.run([*cmd, "--out", str(done)], check=True, cwd=REPO, env=env, capture_output=True)
    out = tmp_path / "b.json"
    proc = subprocess.Popen([*cmd, "--out", str(out)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "b_runs" / "tree_nystrom-seed0.ckpt.npz"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and ckpt.exists() and not out.exists()
    subprocess.run([*cmd, "--out", str(out), "--resume"], check=True, cwd=REPO, env=env, capture_output=True)
    a, b = json.loads(done.read_text()), json.loads(out.read_text())
    assert [strip_time(r) for r in a["runs"]] == [strip_time(r) for r in b["runs"]]
    assert not ckpt.exists()  # removed once the run finished


# --------------------------------------------------------------------------- the comparison


@pytest.fixture(scope="module")
def small_compare():
    cfg = dataclasses.replace(CFG, steps=8)
    return T.compare(cfg, ["full", "uniform", "brute_topk", "tree_nystrom"], seeds=[0, 1])


def test_summary_gaps_and_claims_follow_from_the_runs(small_compare):
    res = small_compare
    by = {(r["miner"], r["seed"]): r for r in res["runs"]}
    s = res["summary"]
    for m in res["miners"]:
        vals = [by[(m, sd)]["final"]["recall@1"] for sd in (0, 1)]
        assert s["per_miner"][m]["recall@1"]["mean"] == pytest.approx(np.mean(vals), rel=1e-12)
        assert s["per_miner"][m]["recall@1"]["std"] == pytest.approx(np.std(vals, ddof=1), rel=1e-12, abs=1e-15)
        gaps = [by[(m, sd)]["final"]["loss"] - by[("full", sd)]["final"]["loss"] for sd in (0, 1)]
        assert s["gaps"][m]["loss"]["per_seed"] == pytest.approx(gaps, rel=1e-12)
    err = s["claims"]["error_gap"]["per_metric"]["loss"]
    assert err["ratio_of_mean_gaps"] == pytest.approx(
        s["gaps"]["tree_nystrom"]["loss"]["mean"] / s["gaps"]["brute_topk"]["loss"]["mean"], rel=1e-12)
    mem = s["claims"]["memory"]
    assert mem["ratio"] == pytest.approx(mem["brute_topk_accelerator_bytes"] / mem["tree_nystrom_accelerator_bytes"])
    assert mem["holds"] == (mem["ratio"] >= 100)
    json.dumps(res, allow_nan=False)  # strict JSON: no NaN / inf anywhere


def test_markdown_table_agrees_with_the_json(small_compare):
    table = T.markdown_table(small_compare)
    s = small_compare["summary"]
    main, gaps = table.split("Gap to full softmax")

    def rows(text):
        return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
                for line in text.splitlines() if line.startswith("| ") and "±" in line}

    per_miner, gap_rows = rows(main), rows(gaps)
    assert list(per_miner) == list(s["per_miner"]) == list(gap_rows)
    for m, e in s["per_miner"].items():
        cells = per_miner[m]
        assert len(cells) == 10
        for cell, key in zip(cells[:5], ["recall@1", "recall@10", "recall@100", "loss", "grad_error"]):
            mean, std = (float(v) for v in cell.split("±"))
            assert mean == pytest.approx(e[key]["mean"], abs=5e-4)
            assert std == pytest.approx(e[key]["std"], abs=5e-4)
        assert float(cells[5]) == pytest.approx(e["target_rows_per_step"], abs=0.05)
        assert float(cells[6]) == pytest.approx(e["logits_per_step"], abs=0.5)
        assert float(cells[8]) == pytest.approx(e["memory"]["at_1e6"]["accelerator_bytes"] / 2**20, rel=5e-3)
        for cell, key in zip(gap_rows[m], T.METRICS):
            mean, std = (float(v) for v in cell.split("±"))
            assert mean == pytest.approx(s["gaps"][m][key]["mean"], abs=5e-4)
    ratio = s["claims"]["memory"]["ratio"]
    assert re.search(rf"= {ratio:.0f}x", table)


def test_progress_lines(capsys):
    cfg = dataclasses.replace(CFG, steps=3, eval_every=3)
    T.compare(cfg, ["uniform"], seeds=[0], progress=True)
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert re.match(r"\[compare\]\s+uniform seed 0 step\s+3/3 loss\s+\S+ elapsed\s+\S+s remaining ~\s*\d+s", line)


def test_command_line_options(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    T.add_arguments(parser)
    args = parser.parse_args(["--preset", "quick", "--steps", "4", "--eval-every", "2", "--miners", "full", "uniform",
                              "--seeds", "0", "--out", str(tmp_path / "c.json"), "--quiet"])
    config, miners, seeds = T.config_from_args(args)
    assert (config.steps, config.n_targets, miners, seeds) == (4, T.PRESETS["quick"]["n_targets"], ["full", "uniform"], [0])
    assert T.run(args) == 0
    saved = json.loads((tmp_path / "c.json").read_text())
    assert capsys.readouterr().out.startswith(T.markdown_table(saved))
    bad = parser.parse_args(["--negatives", "0"])
    with pytest.raises(ValueError, match="negatives"):
        T.config_from_args(bad)
    with pytest.raises(ValueError, match="miners"):
        T.run(parser.parse_args(["--preset", "quick", "--miners", "oracle", "--out", str(tmp_path / "d.json")]))
