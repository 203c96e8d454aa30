"""Watch one query go through the tree: every step of reference/plain.py on a dozen 2-D points, printed.

Twelve points in three clusters in the plane, a tree with branching 2 and
leaves of at most 3 targets, and one query q. The command prints, beside the
brute-force numbers it should match:

1. the points, their logits a_y = <q, z_y> and the softmax P(y); log Z;
2. the node table: n_v, r_v, rho_v and, for this query, <q, r_v> and
   eps_v = ||q|| rho_v (P1: |a_y - <q, r_v>| <= eps_v below v);
3. the root bracket lo <= log Z <= hi (P2);
4. every refinement step of the adaptive cut (P7): the node of largest slack
   expanded, its log slack, lo, hi and the width hi - lo, until the width is
   at most --tol;
5. the cut distribution Phat_C beside P for every target, the total variation
   TV(Phat_C, P) and its two bounds, 1 - exp(-2 eps_C) (P4) and
   1 - exp(-(hi - lo)) (P4b);
6. the rejection sampler's proposals (P6): entry, target, logit, bound
   <q, r_v> + eps_v, acceptance probability, uniform, accepted or not; the
   acceptance rate beside its expectation Z / U = exp(log Z - hi);
7. the best-first top-k search (P8): every node popped, with ub_v (plus the
   rounding margin) and the threshold tau, and the result beside brute force;
8. with --plot FILE, a picture: the points, the balls (r_v, rho_v) of the
   cut's nodes and the query direction.

With --json FILE every printed number is written as well (keys include
log_z, lo, hi, tv, tv_bound and acceptance_rate). The numbers come from the
plain functions themselves (their ``trace`` lists), not from a re-implementation.
It runs in seconds.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

from reference import plain
from reference._validation import check_int, check_positive
from reference.bounds import cut_distribution
from reference.jsonio import write_json
from reference.tree import Tree

__all__ = ["add_arguments", "run", "walkthrough", "report", "plot"]

#: Logit scale ||q|| max_y ||z_y|| of the query: peaked enough that the cut matters, small enough to read.
LOGIT_SCALE = 4.0


def _points(rng: np.random.Generator) -> np.ndarray:
    """Twelve points in the plane: three clusters of four."""
    centers = rng.normal(size=(3, 2)) * 2.0
    return np.repeat(centers, 4, axis=0) + 0.4 * rng.normal(size=(12, 2))


def walkthrough(seed: int = 0, tol: float = 0.5, k: int = 3, n_draws: int = 6) -> tuple[Tree, np.ndarray, dict]:
    """Run the plain algorithms on one query and collect every number the walkthrough prints.

    Parameters
    ----------
    seed : int >= 0
        Seeds the points, the query and the sampler (``np.random.default_rng(seed)``).
    tol : float > 0
        The bracket width at which the adaptive cut stops.
    k : int, 1 <= k <= 12
        Top-k.
    n_draws : int >= 1
        Accepted draws of the rejection sampler.

    Returns
    -------
    tree : Tree
    q : numpy.ndarray, shape (2,)
    data : dict
        JSON-ready: every printed number (see :func:`report`).
    """
    seed = check_int(seed, "seed", low=0)
    tol = check_positive(tol, "tol")
    k = check_int(k, "k", low=1, high=12)
    n_draws = check_int(n_draws, "n_draws", low=1)
    rng = np.random.default_rng(seed)
    z = _points(rng)
    tree = Tree.build(z, branching=2, leaf_size=3, seed=seed)
    direction = rng.normal(size=2)
    q = direction * (LOGIT_SCALE / (np.linalg.norm(direction) * np.linalg.norm(z, axis=1).max()))
    qnorm = float(np.linalg.norm(q))

    # brute force: every logit, log Z and P
    a = z @ q
    log_z = float(logsumexp(a))
    p = np.exp(a - log_z)

    nodes = [{"node": v, "parent": int(tree.parent[v]), "depth": int(tree.depth[v]), "leaf": bool(tree.is_leaf[v]),
              "n": int(tree.count[v]), "r": tree.rep[v].tolist(), "rho": float(tree.radius[v]),
              "s": float(q @ tree.rep[v]), "eps": qnorm * float(tree.radius[v]),
              "targets": tree.order[tree.start[v]:tree.stop[v]].tolist()}
             for v in range(tree.count.size)]
    root_lo, root_hi = plain.bracket(tree, q, 1e300)  # the root cut: its width is below any such tol

    steps: list[plain.Step] = []
    cut = plain.adaptive_cut(tree, q, tol, trace=steps)
    lo, hi = plain.bracket(tree, q, tol)
    cut_nodes, cut_targets = cut.node[cut.node >= 0].tolist(), cut.target[cut.target >= 0].tolist()
    entry_of = {y: ("node", v) for v in cut_nodes for y in nodes[v]["targets"]}
    entry_of.update({y: ("target", y) for y in cut_targets})
    phat = np.exp(cut_distribution(tree, q, cut))
    tv = float(0.5 * np.abs(phat - p).sum())
    eps_c = max([nodes[v]["eps"] for v in cut_nodes], default=0.0)

    proposals: list[plain.Proposal] = []
    draws = plain.rejection_sample(tree, q, n_draws, np.random.default_rng(seed), tol=tol, trace=proposals)
    accepted = sum(pr.accepted for pr in proposals)

    pops: list[plain.Pop] = []
    top_ids, top_logits = plain.topk(tree, q, k, trace=pops)
    brute_ids = np.lexsort((np.arange(12), -a))[:k]

    data = {
        "seed": seed, "tol": tol, "k": k, "n_draws": n_draws,
        "points": z.tolist(), "q": q.tolist(), "q_norm": qnorm,
        "logits": a.tolist(), "p": p.tolist(), "log_z": log_z,
        "nodes": nodes,
        "root_lo": root_lo, "root_hi": root_hi,
        "steps": [{"node": s.node, "log_slack": s.log_slack, "lo": s.lo, "hi": s.hi, "width": s.hi - s.lo}
                  for s in steps],
        "cut_nodes": cut_nodes, "cut_targets": cut_targets,
        "lo": lo, "hi": hi, "width": hi - lo,
        "entry_of": [list(entry_of[y]) for y in range(12)],
        "phat": phat.tolist(), "tv": tv, "eps_c": eps_c,
        "tv_bound": -math.expm1(-(hi - lo)), "tv_bound_eps": -math.expm1(-2.0 * eps_c),
        "proposals": [{"node": pr.node, "target": pr.target, "logit": pr.logit, "bound": pr.bound,
                       "accept_probability": math.exp(min(pr.log_accept, 0.0)), "uniform": pr.uniform,
                       "accepted": pr.accepted} for pr in proposals],
        "draws": draws.tolist(), "acceptance_rate": accepted / len(proposals),
        "expected_acceptance_rate": math.exp(log_z - hi),
        "pops": [{"node": po.node, "ub": po.ub, "tau": None if po.tau == -math.inf else po.tau, "action": po.action}
                 for po in pops],  # tau null: fewer than k targets evaluated yet (printed -inf)
        "topk_ids": top_ids.tolist(), "topk_logits": top_logits.tolist(), "brute_topk_ids": brute_ids.tolist(),
    }
    return tree, q, data


def _f(x: float | None, digits: int = 6) -> str:
    """A number as printed (and so as a reader compares it); None (JSON null) is -inf."""
    return "-inf" if x is None or x == -math.inf else f"{x:.{digits}g}"


def report(data: dict) -> str:
    """The walkthrough as text: sections 1-7 of the module docstring, from :func:`walkthrough`'s data."""
    d, out = data, []
    add = out.append
    q = d["q"]
    add(f"Walkthrough: one query through the tree (seed {d['seed']}, tol {_f(d['tol'])}, k {d['k']})")
    add("")
    add(f"1. Twelve targets z_y in the plane and the query q = ({_f(q[0])}, {_f(q[1])}), ||q|| = {_f(d['q_norm'])}.")
    add("   Logits a_y = <q, z_y>, softmax P(y) = exp(a_y) / Z, by brute force (all 12 logits):")
    add("      y   z_y                      a_y        P(y)")
    for y, (zy, ay, py) in enumerate(zip(d["points"], d["logits"], d["p"])):
        add(f"   {y:4d}   ({_f(zy[0]):>9}, {_f(zy[1]):>9})   {_f(ay):>9}   {_f(py):>9}")
    add(f"   log Z = logsumexp(a) = {_f(d['log_z'], 10)}")
    add("")
    add("2. The tree (branching 2, leaves of at most 3). For this query, s_v = <q, r_v> and eps_v = ||q|| rho_v;")
    add("   P1: every target y below v has |a_y - s_v| <= eps_v.")
    add("      v  parent  leaf  n_v   r_v                      rho_v        s_v      eps_v   targets D(v)")
    for nd in d["nodes"]:
        r = nd["r"]
        add(f"   {nd['node']:4d}  {nd['parent']:6d}  {'yes' if nd['leaf'] else 'no':>4}  {nd['n']:3d}   "
            f"({_f(r[0]):>9}, {_f(r[1]):>9})   {_f(nd['rho']):>9}  {_f(nd['s']):>9}  {_f(nd['eps']):>9}   "
            f"{nd['targets']}")
    add("")
    add("3. The root bracket (P2), one entry: lo = log n + s - eps, hi = log n + s + eps.")
    add(f"   lo = {_f(d['root_lo'], 10)}  <=  log Z = {_f(d['log_z'], 10)}  <=  hi = {_f(d['root_hi'], 10)}"
        f"   (width {_f(d['root_hi'] - d['root_lo'])})")
    add("")
    add(f"4. Refinement (P7): while hi - lo > tol = {_f(d['tol'])}, expand the entry of largest slack")
    add("   S_v = n_v exp(s_v) (exp(eps_v) - exp(-eps_v)): a node by its children, a leaf by its targets.")
    add("   step  expand node   log S_v          lo          hi       width")
    for i, s in enumerate(d["steps"]):
        add(f"   {i + 1:4d}  {s['node']:11d}  {_f(s['log_slack']):>8}  {_f(s['lo'], 10):>10}  {_f(s['hi'], 10):>10}"
            f"  {_f(s['width']):>10}")
    add(f"   final cut: nodes {d['cut_nodes']}, single targets {d['cut_targets']}")
    add(f"   lo = {_f(d['lo'], 10)}  <=  log Z = {_f(d['log_z'], 10)}  <=  hi = {_f(d['hi'], 10)}"
        f"   (width {_f(d['width'])} <= tol)")
    add("")
    add("5. The cut distribution (P4): Phat_C(y) = exp(s_v(y)) / sum_v n_v exp(s_v), v(y) the entry holding y.")
    add("      y   entry          P(y)    Phat_C(y)")
    for y in range(12):
        kind, e = d["entry_of"][y]
        add(f"   {y:4d}   {kind + ' ' + str(e):<10}  {_f(d['p'][y]):>9}   {_f(d['phat'][y]):>9}")
    add(f"   TV(Phat_C, P) = {_f(d['tv'])}")
    add(f"   bound P4b: 1 - exp(-(hi - lo)) = {_f(d['tv_bound'])}   (what tol buys: at most 1 - exp(-tol))")
    add(f"   bound P4:  1 - exp(-2 eps_C)   = {_f(d['tv_bound_eps'])}   (eps_C = {_f(d['eps_c'])}, "
        "the largest eps_v in the cut)")
    add("")
    add("6. Rejection sampling (P6) from the envelope U_v = n_v exp(s_v + eps_v) of this cut, U = exp(hi):")
    add("   propose entry v with probability U_v / U, y uniform in D(v), accept with probability")
    add("   exp(a_y - s_v - eps_v) <= 1. Every accepted y is an exact draw from P.")
    add("   prop  entry        y        a_y   s_v + eps_v   accept prob.    uniform   accepted")
    for i, pr in enumerate(d["proposals"]):
        entry = f"node {pr['node']}" if pr["node"] >= 0 else "target"
        add(f"   {i + 1:4d}  {entry:<9}  {pr['target']:3d}  {_f(pr['logit']):>9}  {_f(pr['bound']):>12}  "
            f"{_f(pr['accept_probability']):>13}  {_f(pr['uniform']):>9}   {'yes' if pr['accepted'] else 'no'}")
    add(f"   draws {d['draws']}; acceptance rate {sum(p['accepted'] for p in d['proposals'])}/{len(d['proposals'])}"
        f" = {_f(d['acceptance_rate'])}, expected Z / U = exp(log Z - hi) = {_f(d['expected_acceptance_rate'])}")
    add("")
    add(f"7. Top-{d['k']} (P8), best first: pop the node of largest ub_v = s_v + eps_v (+ rounding margin);")
    add("   stop when ub_v < tau, the k-th best logit evaluated so far.")
    add("    pop   node          ub         tau   action")
    for i, po in enumerate(d["pops"]):
        add(f"   {i + 1:4d}  {po['node']:5d}  {_f(po['ub']):>10}  {_f(po['tau']):>10}   {po['action']}")
    add(f"   top-{d['k']} ids {d['topk_ids']}, logits {[_f(x) for x in d['topk_logits']]};"
        f" brute force {d['brute_topk_ids']}")
    return "\n".join(out)


def plot(tree: Tree, q: np.ndarray, data: dict, path: str | Path) -> Path:
    """Save the picture: points (numbered), the balls of the cut's nodes, its single targets, the query direction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = np.asarray(data["points"])
    fig, ax = plt.subplots(figsize=(7, 7))
    ax.scatter(z[:, 0], z[:, 1], c=data["p"], cmap="viridis", s=60, zorder=3, edgecolors="k")
    for y, (x0, x1) in enumerate(z):
        ax.annotate(str(y), (x0, x1), textcoords="offset points", xytext=(5, 5), fontsize=9)
    for v in data["cut_nodes"]:
        ax.add_patch(plt.Circle(tree.rep[v], tree.radius[v], fill=False, color="C1", lw=1.5))
        if tree.radius[v] == 0:  # a ball of radius 0: its one point, marked
            ax.scatter(*tree.rep[v], s=200, marker="s", facecolors="none", edgecolors="C1", zorder=2)
        ax.annotate(f"node {v}", tree.rep[v], color="C1", fontsize=9, ha="center")
    for y in data["cut_targets"]:
        ax.scatter(*z[y], s=200, facecolors="none", edgecolors="C3", zorder=2)
    u = q / np.linalg.norm(q) * np.abs(z).max()
    ax.annotate("", xy=u, xytext=(0, 0), arrowprops=dict(arrowstyle="->", color="C0", lw=2))
    ax.annotate("q direction", u, color="C0")
    ax.set_aspect("equal")
    ax.autoscale_view()
    ax.set_title(f"The cut at tol {data['tol']:g}: balls (r_v, rho_v) of its nodes (orange), single targets "
                 "(red rings), radius 0 (orange squares);\n"
                 f"points coloured by P(y); log Z = {data['log_z']:.4f} in [{data['lo']:.4f}, {data['hi']:.4f}]",
                 fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m reference walkthrough``."""
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the points, the query and the sampler (default: %(default)s)")
    parser.add_argument("--tol", type=float, default=0.5, help="bracket width at which the adaptive cut stops "
                        "(default: %(default)s)")
    parser.add_argument("--k", type=int, default=3, help="top-k (default: %(default)s)")
    parser.add_argument("--plot", metavar="FILE", default=None, help="save the picture (PNG) to FILE")
    parser.add_argument("--json", metavar="FILE", default=None, help="write every printed number to FILE (JSON)")


def run(args: argparse.Namespace) -> int:
    """Print the walkthrough; write the picture and the JSON if asked."""
    tree, q, data = walkthrough(args.seed, args.tol, args.k)
    print(report(data))
    if args.plot:
        print(f"\npicture: {plot(tree, q, data, args.plot)}")
    if args.json:
        write_json(args.json, data)
        print(f"numbers: {args.json}")
    return 0
