"""``python -m reference walkthrough``: every number it prints, held against brute force.

The walkthrough (``reference/walkthrough.py``) narrates plain.py's own steps
on 12 points. These tests recompute from the JSON's points, query and tree
table, by the definitions and without plain or the fast path: log Z
(``scipy.special.logsumexp``), P, the bracket of every refinement step, the
cut distribution and its TV, the rejection proposals and the top-k; and
check the printed text shows the same numbers. Deterministic: 1e-12 absolute
on quantities of order 1-10 (a dozen float64 terms; plain's bracket is not
widened, so lo <= log Z <= hi is checked to that margin).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.special import logsumexp

from reference.walkthrough import report, walkthrough

FP = 1e-12


@pytest.fixture(scope="module", params=[0, 1, 7])
def data(request) -> dict:
    return walkthrough(seed=request.param, tol=0.3)[2]


def _children(data: dict, v: int) -> tuple[list[int], list[int]]:
    """Statement (4) from the JSON's node table: live children of an internal node, targets of a leaf."""
    nodes = data["nodes"]
    if nodes[v]["leaf"]:
        return [], list(nodes[v]["targets"])
    return [c["node"] for c in nodes if c["parent"] == v and c["n"] > 0], []


def _bracket(data: dict, cut_nodes: list[int], cut_targets: list[int]) -> tuple[float, float]:
    """(2) over a cut, from the points, the query and the node table."""
    q, z, nodes = np.array(data["q"]), np.array(data["points"]), data["nodes"]
    t = [math.log(nodes[v]["n"]) + float(np.dot(q, nodes[v]["r"])) for v in cut_nodes]
    e = [float(np.linalg.norm(q)) * nodes[v]["rho"] for v in cut_nodes]
    a = [float(z[y] @ q) for y in cut_targets]
    return float(logsumexp(np.subtract(t, e).tolist() + a)), float(logsumexp(np.add(t, e).tolist() + a))


def test_brute_force_numbers(data):
    """log Z, P, the final bracket (lo <= log Z <= hi, width <= tol), TV and its bounds, top-k."""
    q, z = np.array(data["q"]), np.array(data["points"])
    a = z @ q
    log_z = float(logsumexp(a))
    assert abs(data["log_z"] - log_z) <= FP
    np.testing.assert_allclose(data["logits"], a, rtol=0, atol=FP)
    np.testing.assert_allclose(data["p"], np.exp(a - log_z), rtol=0, atol=FP)
    assert data["lo"] - FP <= log_z <= data["hi"] + FP and data["hi"] - data["lo"] <= data["tol"]
    lo, hi = _bracket(data, data["cut_nodes"], data["cut_targets"])
    assert abs(lo - data["lo"]) <= FP and abs(hi - data["hi"]) <= FP
    # the cut distribution, entry by entry: Phat(y) = exp(<q, r_v(y)>) / sum_v n_v exp(<q, r_v>)
    nodes = data["nodes"]
    s = {y: float(np.dot(q, nodes[v]["r"])) for v in data["cut_nodes"] for y in nodes[v]["targets"]}
    s.update({y: float(a[y]) for y in data["cut_targets"]})
    assert sorted(s) == list(range(12))  # the cut is a partition
    log_phat = np.array([s[y] for y in range(12)])
    log_phat -= logsumexp(log_phat)
    np.testing.assert_allclose(data["phat"], np.exp(log_phat), rtol=0, atol=FP)
    tv = 0.5 * float(np.abs(np.exp(log_phat) - np.exp(a - log_z)).sum())
    assert abs(data["tv"] - tv) <= FP
    assert abs(data["tv_bound"] - (1.0 - math.exp(-(hi - lo)))) <= FP
    eps_c = max([float(np.linalg.norm(q)) * nodes[v]["rho"] for v in data["cut_nodes"]], default=0.0)
    assert abs(data["tv_bound_eps"] - (1.0 - math.exp(-2 * eps_c))) <= FP
    assert tv <= data["tv_bound"] <= data["tv_bound_eps"] + FP          # P4b, and P4b is the sharper one
    assert data["tv_bound"] <= 1.0 - math.exp(-data["tol"]) + FP      # what tol buys
    assert data["topk_ids"] == data["brute_topk_ids"] == np.lexsort((np.arange(12), -a))[:data["k"]].tolist()
    np.testing.assert_allclose(data["topk_logits"], a[data["topk_ids"]], rtol=0, atol=FP)


def test_refinement_steps_replayed(data):
    """Every printed step: its bracket is (2) over the cut the steps before it leave, the node expanded
    has the largest slack (3) of that cut, and the steps end at the final cut with width <= tol."""
    q, nodes = np.array(data["q"]), data["nodes"]
    cut_nodes, cut_targets = [0], []
    root = _bracket(data, [0], [])
    assert abs(root[0] - data["root_lo"]) <= FP and abs(root[1] - data["root_hi"]) <= FP
    assert root[0] - FP <= data["log_z"] <= root[1] + FP
    for step in data["steps"]:
        lo, hi = _bracket(data, cut_nodes, cut_targets)
        assert abs(step["lo"] - lo) <= FP and abs(step["hi"] - hi) <= FP and step["width"] > data["tol"]
        slack = {v: math.log(nodes[v]["n"]) + float(np.dot(q, nodes[v]["r"])) + nodes[v]["eps"]
                 + math.log(-math.expm1(-2 * nodes[v]["eps"])) for v in cut_nodes if nodes[v]["eps"] > 0}
        assert abs(step["log_slack"] - slack[step["node"]]) <= FP and step["log_slack"] >= max(slack.values()) - FP
        children, targets = _children(data, step["node"])
        cut_nodes = [v for v in cut_nodes if v != step["node"]] + children
        cut_targets += targets
    assert sorted(cut_nodes) == sorted(data["cut_nodes"]) and sorted(cut_targets) == sorted(data["cut_targets"])


def test_proposals_and_acceptance_rate(data):
    """Each proposal: logit a_y, bound <q, r_v> + eps_v >= a_y, acceptance probability exp(min(0, a_y - bound)),
    accepted iff uniform < it; the draws are the accepted targets; the rate is accepted / proposals, and
    its expectation Z / U = exp(log Z - hi) >= exp(-tol)."""
    q, z, nodes = np.array(data["q"]), np.array(data["points"]), data["nodes"]
    for pr in data["proposals"]:
        y, v = pr["target"], pr["node"]
        assert abs(pr["logit"] - float(z[y] @ q)) <= FP
        if v >= 0:
            assert y in nodes[v]["targets"] and v in data["cut_nodes"]
            assert abs(pr["bound"] - (float(np.dot(q, nodes[v]["r"])) + nodes[v]["eps"])) <= FP
        else:
            assert y in data["cut_targets"] and pr["bound"] == pr["logit"]
        assert pr["logit"] <= pr["bound"] + FP
        assert abs(pr["accept_probability"] - math.exp(min(pr["logit"] - pr["bound"], 0.0))) <= FP
        assert pr["accepted"] == (pr["uniform"] < pr["accept_probability"])
    accepted = [pr["target"] for pr in data["proposals"] if pr["accepted"]]
    assert accepted == data["draws"] and len(accepted) == data["n_draws"]
    assert data["acceptance_rate"] == len(accepted) / len(data["proposals"])
    assert abs(data["expected_acceptance_rate"] - math.exp(data["log_z"] - data["hi"])) <= FP
    assert data["expected_acceptance_rate"] >= math.exp(-data["tol"]) - FP


def test_topk_pops(data):
    """Every popped node's ub is at least every logit below it (P1 plus margin); tau is the k-th best logit
    evaluated before the pop; the search stops exactly at the first pop with ub < tau (or runs out)."""
    z, q, nodes, k = np.array(data["points"]), np.array(data["q"]), data["nodes"], data["k"]
    a = z @ q
    seen: list[float] = []
    for i, po in enumerate(data["pops"]):
        assert max(a[nodes[po["node"]]["targets"]]) <= po["ub"]
        tau = sorted(seen, reverse=True)[k - 1] if len(seen) >= k else None
        assert (po["tau"] is None and tau is None) or abs(po["tau"] - tau) <= FP
        assert (po["action"] == "stop") == (tau is not None and po["ub"] < tau)
        assert po["action"] != "stop" or i == len(data["pops"]) - 1
        if po["action"] == "leaf":
            seen += a[nodes[po["node"]]["targets"]].tolist()


def test_report_prints_the_numbers(data):
    """The text shows the JSON's numbers as it formats them (log Z, lo, hi, TV, its bound, the rate)."""
    text = report(data)
    for key, digits in [("log_z", 10), ("lo", 10), ("hi", 10), ("tv", 6), ("tv_bound", 6),
                        ("acceptance_rate", 6), ("expected_acceptance_rate", 6)]:
        assert f"{data[key]:.{digits}g}" in text, key
    assert f"brute force {data['brute_topk_ids']}" in text


def test_command_line(tmp_path):
    """``python -m reference walkthrough --seed 2 --plot F --json F``: exit 0, a PNG, JSON equal to the function's."""
    png, out = tmp_path / "w.png", tmp_path / "w.json"
    res = subprocess.run([sys.executable, "-m", "reference", "walkthrough", "--seed", "2", "--plot", str(png),
                          "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    got = json.loads(out.read_text())
    want = walkthrough(seed=2)[2]
    assert got.keys() == want.keys() and got["log_z"] == want["log_z"] and got["steps"] == want["steps"]
    assert report(want) in res.stdout
    bad = subprocess.run([sys.executable, "-m", "reference", "walkthrough", "--tol", "-1"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "tol: expected" in bad.stderr
