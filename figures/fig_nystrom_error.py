"""Nystrom approximation error during real training, against the stale cache; P12 logit errors.

The oracle dual encoder (``reference.encoder``) is trained with the full
softmax (Adam) on a synthetic retrieval dataset; the true target encodings G_t
of all N targets are recorded at every step. The cache is refreshed every R
steps (g_0 = G at the refresh step, landmarks re-selected on it). Between
refreshes:

- (a) Nystrom: ghat_t = W_t^T phi(y) from the m landmarks' current encodings
  G_t(L), for each kernel (linear + constant feature, RBF, polynomial) and
  landmark strategy (uniform, k-means++, ridge leverage), against the number
  of steps since the refresh (m = ``M_MAIN``) and against m (error at the last
  step before the next refresh, the stalest point);
- (b) the stale cache g_0 itself (no Nystrom), on the same axes;
- (c) ``nystrom_logit``: a :class:`reference.dynamic.DynamicIndex` run along
  the same trajectory (step every training step, refresh every R steps by
  update + partial rebuild); for held-out queries the approximate logits
  beta <f, ghat(y)> against the true beta <f, g(y)> and the P12 bound
  beta ||f|| ||ghat(y) - g(y)||, the log-partition error against its
  consequence max_y of that bound, and the tree's bracket, widened by the same
  amount, around the true log Z. Every point is asserted.

Relative error = ||Ghat_t - G_t||_F / ||G_t||_F over all N targets.

What to expect: the linear kernel with m >= 2(d + 1) landmarks is exact at a
refresh (P11 with A = I) and stays far below the stale cache; with m < d + 1
it only sees the projection onto span g_0(L). At m = d + 1 (dashed grey line)
K_LL is square and ill-conditioned: the least-squares map turns into an
exact interpolation of m points and the error peaks (the interpolation
threshold; a ridge or more landmarks remove it). RBF and polynomial kernels
need more landmarks, because even the cache itself is only approximated
(their error at 0 steps since the refresh is not 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

from figures.common import plt, save, write_csv
from reference.data import make_dataset
from reference.dynamic import DynamicIndex
from reference.encoder import DualEncoder, EncoderConfig
from reference.nystrom import LANDMARK_METHODS, NystromMap, linear, polynomial, rbf, select_landmarks
from reference.optim import Adam

TITLE = "Nystrom ghat_t vs stale cache during real training (kernels, landmarks, m); P12 logit-error bound"

KERNELS = {"linear(c=1)": linear(1.0), "rbf(gamma=1)": rbf(1.0), "poly(2, c=1)": polynomial(2, 1.0)}
M_MAIN = 64  # > d + 1 = 33: the linear kernel's landmarks span the embeddings
#: Rounding allowance of the asserted P12 inequalities: the two sides are
#: computed along different paths (phi W vs G directly), each to ~1e-15
#: relative of logits of magnitude <= beta; 1e-9 is the tolerance of proofs/README.md section 6.14.
REL_TOL = 1e-9


@dataclass
class Trajectory:
    """True encodings along a real training run."""

    G: np.ndarray      # (T + 1, N, d) target encodings g_t, before the update of step t
    F: np.ndarray      # (T + 1, B, d) held-out query encodings f_t
    beta: float
    loss: np.ndarray   # (T,) training loss


def training_trajectory(*, n_targets: int, steps: int, lr: float = 3e-3, batch: int = 128,
                        n_queries: int = 64, seed: int = 0) -> Trajectory:
    """Train the oracle with the full softmax and record G_t (all targets) and f_t (test queries)."""
    data = make_dataset(n_targets, dim=32, seed=seed)
    cfg = EncoderConfig(query_dim=data.train_x.shape[1], target_dim=data.targets.shape[1],
                        hidden=(64,), out_dim=32, beta=10.0)
    model = DualEncoder(cfg, seed=seed)
    opt = Adam(model.params, lr=lr)
    rng = np.random.default_rng(seed)
    Xq = data.test_x[:n_queries]
    G, F, loss = [], [], []
    for t in range(steps + 1):
        G.append(model.encode_targets(data.targets, count=False))
        F.append(model.encode_queries(Xq))
        if t == steps:
            break
        b = rng.integers(0, data.train_x.shape[0], batch)
        value, grads = model.full_softmax_loss(data.train_x[b], data.train_pos[b], data.targets)
        opt.step(grads)
        loss.append(value)
    return Trajectory(np.array(G), np.array(F), float(cfg.beta), np.array(loss))


def _rel(A: np.ndarray, B: np.ndarray) -> float:
    """||A - B||_F / ||B||_F (elementwise sums: no BLAS call per evaluation)."""
    return float(np.sqrt(np.sum((A - B) ** 2) / np.sum(B**2)))


def error_sweep(traj: Trajectory, *, R: int, ms: tuple[int, ...], seed: int = 0) -> dict[str, list]:
    """Relative errors of ghat_t (each kernel, strategy, m) and of the stale cache.

    For m == M_MAIN every step of every refresh cycle is evaluated; for the
    other m only the last step of each cycle (the stalest).
    """
    T = traj.G.shape[0] - 1
    rows: dict[str, list] = {k: [] for k in ("kernel", "method", "m", "cycle", "since_refresh", "step",
                                             "rel_err_nystrom", "rel_err_stale", "rank")}
    for c, s0 in enumerate(range(0, T, R)):
        G0 = traj.G[s0]
        steps = np.arange(s0, min(s0 + R, T + 1))
        for kname, kern in KERNELS.items():
            for method in LANDMARK_METHODS:
                for m in ms:
                    rng = np.random.default_rng([seed, c, m])
                    L = select_landmarks(G0, m, method=method, rng=rng, kernel=kern)
                    nmap = NystromMap(kern).fit(G0, L)
                    phi = nmap.features(G0)
                    for t in (steps if m == M_MAIN else steps[-1:]):
                        ghat = nmap.approximate(phi, nmap.project(traj.G[t][L]))
                        for key, val in (("kernel", kname), ("method", method), ("m", m), ("cycle", c),
                                         ("since_refresh", t - s0), ("step", t),
                                         ("rel_err_nystrom", _rel(ghat, traj.G[t])),
                                         ("rel_err_stale", _rel(G0, traj.G[t])), ("rank", nmap.rank)):
                            rows[key].append(val)
    return rows


def logit_run(traj: Trajectory, *, R: int, m: int, kernel=linear(1.0), method: str = "kmeans++",
              tol: float = 0.5, seed: int = 0) -> dict[str, list]:
    """Run a DynamicIndex along the trajectory and check P12 at every step (asserts)."""
    T = traj.G.shape[0] - 1
    beta = traj.beta
    rng = np.random.default_rng(seed)
    G0 = traj.G[0]
    index = DynamicIndex(G0, select_landmarks(G0, m, method=method, rng=rng, kernel=kernel),
                         kernel=kernel, beta=beta, seed=seed)
    tree = index.tree
    rows: dict[str, list] = {k: [] for k in ("step", "since_refresh", "query", "max_logit_err",
                                             "max_logit_bound", "logz_err", "delta", "lo", "hi",
                                             "logz_hat", "logz_true")}
    pairs: dict[str, list] = {"step": [], "since_refresh": [], "logit_err": [], "bound": []}
    for t in range(T + 1):
        G, F = traj.G[t], traj.F[t]
        if t > 0 and t % R == 0:
            index.refresh(G, landmarks=select_landmarks(G, m, method=method, rng=rng, kernel=kernel))
            assert index.tree is tree, "refresh must repair the tree, not replace it"
            tree.check_invariants()
        else:
            index.step(G[index.landmarks])
        a_hat = index.logits(F)                      # <psi_t(x), phi(y)> = beta <f, ghat(y)>
        a_true = beta * F @ G.T
        ghat = index.approximate()
        bound = beta * np.linalg.norm(F, axis=1)[:, None] * np.linalg.norm(ghat - G, axis=1)[None, :]
        err = np.abs(a_hat - a_true)
        scale = REL_TOL * (1.0 + np.abs(a_true).max())
        assert np.all(err <= bound + scale), f"P12 logit bound violated at step {t}: {np.max(err - bound)}"
        logz_hat, logz_true = logsumexp(a_hat, axis=1), logsumexp(a_true, axis=1)
        delta = bound.max(axis=1)
        assert np.all(np.abs(logz_hat - logz_true) <= delta + scale), f"P12 log Z bound violated at step {t}"
        lo, hi, _ = index.bracket(F, tol=tol)
        assert np.all(lo <= logz_hat + scale) and np.all(logz_hat <= hi + scale), \
            f"tree bracket does not hold for the approximate softmax at step {t}"
        assert np.all(lo - delta <= logz_true + scale) and np.all(logz_true <= hi + delta + scale), \
            f"widened bracket misses the true log Z at step {t}"
        s = t % R
        for key, val in (("step", np.full(F.shape[0], t)), ("since_refresh", np.full(F.shape[0], s)),
                         ("query", np.arange(F.shape[0])), ("max_logit_err", err.max(axis=1)),
                         ("max_logit_bound", delta), ("logz_err", np.abs(logz_hat - logz_true)),
                         ("delta", delta), ("lo", lo), ("hi", hi), ("logz_hat", logz_hat),
                         ("logz_true", logz_true)):
            rows[key].extend(np.asarray(val).tolist())
        pick = rng.integers(0, err.size, 40)
        pairs["step"].extend([t] * pick.size)
        pairs["since_refresh"].extend([s] * pick.size)
        pairs["logit_err"].extend(err.ravel()[pick].tolist())
        pairs["bound"].extend(bound.ravel()[pick].tolist())
    rows["_pairs"] = pairs  # type: ignore[assignment]
    return rows


def _summary(rows: dict[str, list], R: int) -> dict[str, np.ndarray]:
    """Mean over cycles of the errors of every (kernel, method, m), at the stalest step."""
    k, meth, m, s = (np.asarray(rows[c]) for c in ("kernel", "method", "m", "since_refresh"))
    e_n, e_s = np.asarray(rows["rel_err_nystrom"]), np.asarray(rows["rel_err_stale"])
    last = s == s.max()
    return {"kernel": k, "method": meth, "m": m, "s": s, "last": last, "e_n": e_n, "e_s": e_s}


def make(out_dir: Path, *, quick: bool = False) -> list[Path]:
    out_dir = Path(out_dir)
    if quick:
        n_targets, steps, R, ms = 300, 16, 8, (16, M_MAIN)
    else:
        n_targets, steps, R, ms = 2000, 120, 20, (8, 16, 33, M_MAIN, 128, 256)
    traj = training_trajectory(n_targets=n_targets, steps=steps)
    rows = error_sweep(traj, R=R, ms=ms)
    S = _summary(rows, R)
    assert np.all(np.isfinite(S["e_n"])) and np.all(S["e_n"] >= 0)
    # Right after a refresh the linear kernel with spanning landmarks reproduces the cache (P11, A = I).
    at0 = (S["s"] == 0) & (S["kernel"] == "linear(c=1)") & (S["m"] == M_MAIN)
    assert np.all(S["e_n"][at0] < 1e-8), S["e_n"][at0]

    colors = dict(zip(KERNELS, ("C0", "C1", "C2")))
    styles = dict(zip(LANDMARK_METHODS, ("-", "--", ":")))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    main = S["m"] == M_MAIN
    s_axis = np.arange(R if not quick else min(R, steps))
    for kname in KERNELS:
        for method in LANDMARK_METHODS:
            sel = main & (S["kernel"] == kname) & (S["method"] == method)
            y = [S["e_n"][sel & (S["s"] == s)].mean() for s in s_axis]
            ax1.plot(s_axis, y, styles[method], color=colors[kname], label=f"{kname}, {method}")
    stale = [S["e_s"][main & (S["s"] == s)].mean() for s in s_axis]
    ax1.plot(s_axis, stale, "k-", lw=2.5, label="stale cache g_0")
    ax1.set_xlabel("steps since the last refresh")
    ax1.set_ylabel("relative error ||Ghat_t - G_t||_F / ||G_t||_F")
    ax1.set_title(f"(a, b) error vs staleness, m = {M_MAIN}, R = {R}")
    ax1.set_ylim(bottom=0)
    ax1.legend(fontsize=6, ncol=2)
    last = S["last"]
    for kname in KERNELS:
        for method in LANDMARK_METHODS:
            sel = last & (S["kernel"] == kname) & (S["method"] == method)
            y = [S["e_n"][sel & (S["m"] == m)].mean() for m in ms]
            ax2.plot(ms, y, styles[method], marker="o", ms=3, color=colors[kname], label=f"{kname}, {method}")
    ax2.axhline(S["e_s"][last].mean(), color="k", lw=2.5, label="stale cache g_0")
    ax2.axvline(33, color="gray", lw=0.8, ls="--")
    ax2.text(33, ax2.get_ylim()[1] * 0.9, " d + 1", fontsize=7, color="gray")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("landmarks m")
    ax2.set_ylabel("relative error at the stalest step (R - 1)")
    ax2.set_title("(a, b) error vs m, just before the next refresh")
    ax2.legend(fontsize=6, ncol=2)
    paths = [save(fig, out_dir / "nystrom_error.png"),
             write_csv(out_dir / "nystrom_error.csv", {k: v for k, v in rows.items()})]

    # (c) P12 on a DynamicIndex along the same trajectory
    lrows = logit_run(traj, R=R, m=M_MAIN)
    pairs = lrows.pop("_pairs")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    pe, pb = np.asarray(pairs["logit_err"]), np.asarray(pairs["bound"])
    keep = pb > 1e-9  # at a refresh step (linear kernel, spanning landmarks) both are ~0
    sc = ax1.scatter(pb[keep], np.maximum(pe[keep], 1e-9), c=np.asarray(pairs["since_refresh"])[keep],
                     s=4, cmap="viridis")
    lim = [max(pb[keep].min() / 2, 1e-9), max(pb.max(), pe.max()) * 2]
    ax1.plot(lim, lim, "k--", lw=1, label=f"bound = measured ({np.count_nonzero(~keep)} pairs with bound < 1e-9 not shown)")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("P12 bound  beta ||f|| ||ghat(y) - g(y)||")
    ax1.set_ylabel("measured |beta <f, ghat(y)> - beta <f, g(y)>|")
    ax1.set_title(f"(c) logit error vs bound (linear, k-means++, m = {M_MAIN})")
    fig.colorbar(sc, ax=ax1, label="steps since refresh")
    ax1.legend(fontsize=7)
    st = np.asarray(lrows["step"])
    t_axis = np.unique(st)
    for key, label, style in (("logz_err", "|log Zhat - log Z| (max over queries)", "C0-"),
                              ("delta", "bound max_y beta||f|| ||ghat - g|| (max)", "C3--"),
                              ("max_logit_err", "max logit error (max)", "C2:")):
        v = np.asarray(lrows[key])
        ax2.plot(t_axis, [max(v[st == t].max(), 1e-12) for t in t_axis], style, label=label)
    for t in range(R, steps + 1, R):
        ax2.axvline(t, color="gray", lw=0.6)
    ax2.set_yscale("log")
    ax2.set_ylim(bottom=1e-6)
    ax2.set_xlabel("training step (grey: refresh by update + rebuild; values < 1e-6 clipped)")
    ax2.set_title("(c) log-partition error and its P12 bound")
    ax2.legend(fontsize=7)
    paths += [save(fig, out_dir / "nystrom_logit.png"), write_csv(out_dir / "nystrom_logit.csv", lrows)]
    return paths
