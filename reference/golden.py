"""Golden vectors: the reference's own outputs for fixed seeds, pinned in ``.npz`` files.

proofs/README.md section 9. Each file of ``reference/golden/`` holds the inputs and
outputs of one part of the reference (softmax, encoder, data, tree, bounds
and samplers, Nystrom) for fixed seeds. They serve two purposes:

- a regression test: ``tests/test_golden.py`` recomputes every case and
  requires the stored values (floats to 1e-9 relative, integers and strings
  exactly), so a change in the reference's numbers is never silent;
- a portable oracle: another implementation can load a file (plain arrays,
  ``numpy.load(path, allow_pickle=False)``; the ``meta`` entry is a JSON
  string describing every key) and compare itself without running the
  reference.

Regenerate after an *intended* change of the reference's numbers (and say
why in the commit message)::

    python -m reference conformance --golden regenerate
    python -m reference conformance --golden check

Sampled ids depend on NumPy's ``Generator`` streams, which NumPy may change
between versions (NEP 19); if only the ``*ids`` entries differ after a NumPy
upgrade, regenerating is the fix.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "GOLDEN_DIR",
    "CASES",
    "RTOL",
    "compute",
    "load",
    "save",
    "compare",
    "check",
    "regenerate",
    "cli",
]

#: Where the package keeps its golden vectors (package data, see pyproject).
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
#: Float agreement required on recomputation: proofs/README.md section 6's tolerance for
#: deterministic float64 results (the same code on another BLAS may differ in
#: the last bits, never by 1e-9).
RTOL = 1e-9


def _meta(description: str, keys: dict[str, str], **inputs: Any) -> np.ndarray:
    """A 0-d unicode array holding JSON (loadable without pickle)."""
    return np.array(json.dumps({"description": description, "keys": keys, "inputs": inputs}, sort_keys=True))


def _softmax_case() -> dict[str, np.ndarray]:
    from reference import softmax

    rng = np.random.default_rng(101)
    logits = rng.standard_normal((4, 40)) * np.array([[0.5], [3.0], [10.0], [1.0]])
    logits[3] += 1e4  # log space: a row near 1e4
    pos = np.array([0, 5, 17, 39], dtype=np.int64)
    loss, dlogits = softmax.full_softmax_loss(logits, pos)
    draws = softmax.sample_softmax(logits, 25, np.random.default_rng(7))
    a_neg = rng.standard_normal((4, 6)) * 2.0
    log_q = np.log(rng.dirichlet(np.ones(6), size=4))
    a_pos = rng.standard_normal(4)
    s_loss, s_dpos, s_dneg = softmax.sampled_softmax_loss(a_pos, a_neg, log_q)
    t_loss, t_dpos, t_dneg = softmax.sampled_softmax_loss(a_pos, a_neg, None)
    keys = {
        "logits": "(4, 40) input; row 3 is offset by 1e4",
        "pos": "(4,) positive ids",
        "log_partition": "log Z per row",
        "softmax": "P per row",
        "sample_ids": "sample_softmax(logits, 25, default_rng(7))",
        "full_loss, full_dlogits": "full_softmax_loss(logits, pos)",
        "a_pos, a_neg, log_q": "inputs of sampled_softmax_loss",
        "sampled_loss, sampled_dpos, sampled_dneg": "sampled_softmax_loss(a_pos, a_neg, log_q)",
        "topk_loss, topk_dpos, topk_dneg": "sampled_softmax_loss(a_pos, a_neg, None)",
    }
    return {
        "meta": _meta("reference.softmax on fixed logits", keys, seed=101, sample_seed=7),
        "logits": logits,
        "pos": pos,
        "log_partition": softmax.log_partition(logits),
        "softmax": softmax.softmax(logits),
        "sample_ids": draws,
        "full_loss": np.array(loss),
        "full_dlogits": dlogits,
        "a_pos": a_pos,
        "a_neg": a_neg,
        "log_q": log_q,
        "sampled_loss": np.array(s_loss),
        "sampled_dpos": s_dpos,
        "sampled_dneg": s_dneg,
        "topk_loss": np.array(t_loss),
        "topk_dpos": t_dpos,
        "topk_dneg": t_dneg,
    }


def _encoder_case() -> dict[str, np.ndarray]:
    from reference.encoder import DualEncoder, EncoderConfig

    config = EncoderConfig(query_dim=6, target_dim=5, hidden=(8,), out_dim=4, activation="tanh",
                           normalize=True, beta=5.0)
    enc = DualEncoder(config, seed=3)
    rng = np.random.default_rng(102)
    X = rng.standard_normal((5, 6))
    Y = rng.standard_normal((12, 5))
    pos = rng.integers(0, 12, 5)
    neg = rng.integers(0, 12, (5, 4))
    log_q = np.log(np.full((5, 4), 1.0 / 12))
    init = enc.get_params()
    loss, grads = enc.full_softmax_loss(X, pos, Y)
    s_loss, s_grads = enc.sampled_softmax_loss(X, pos, Y, neg, log_q)
    out: dict[str, np.ndarray] = {
        "meta": _meta(
            "reference.encoder.DualEncoder(config, seed=3): initial parameters, full and sampled losses",
            {
                "config": "JSON of EncoderConfig",
                "param.<name>": "initial parameters (the initialisation is pinned too)",
                "X, Y, pos, neg, log_q": "batch",
                "full_loss, full_grad.<name>": "full_softmax_loss(X, pos, Y)",
                "sampled_loss, sampled_grad.<name>": "sampled_softmax_loss(X, pos, Y, neg, log_q)",
                "F, G": "encode_queries(X), encode_targets(Y)",
            },
            seed=3, batch_seed=102,
        ),
        "config": np.array(json.dumps({**config.__dict__, "hidden": list(config.hidden)}, sort_keys=True)),
        "X": X, "Y": Y, "pos": pos, "neg": neg, "log_q": log_q,
        "full_loss": np.array(loss),
        "sampled_loss": np.array(s_loss),
        "F": enc.encode_queries(X),
        "G": enc.encode_targets(Y, count=False),
    }
    for name in init:
        out[f"param.{name}"] = init[name]
        out[f"full_grad.{name}"] = grads[name]
        out[f"sampled_grad.{name}"] = s_grads[name]
    return out


def _data_case() -> dict[str, np.ndarray]:
    from reference import data

    targets = data.make_targets(64, 4, depth=2, branching=4, seed=5)
    ds = data.make_dataset(n_targets=40, dim=6, query_dim=5, queries_per_target=2, depth=2, branching=3, seed=6)
    return {
        "meta": _meta(
            "reference.data generators",
            {"targets": "make_targets(64, 4, depth=2, branching=4, seed=5)",
             "ds_*": "make_dataset(n_targets=40, dim=6, query_dim=5, queries_per_target=2, depth=2, branching=3, seed=6)"},
        ),
        "targets": targets,
        "ds_targets": ds.targets,
        "ds_train_x": ds.train_x,
        "ds_train_pos": ds.train_pos,
        "ds_test_x": ds.test_x,
        "ds_test_pos": ds.test_pos,
        "ds_clusters": ds.clusters,
    }


def _index_case() -> dict[str, np.ndarray]:
    from reference.bounds import adaptive_cut, log_partition_bracket
    from reference.sampling import cut_sample, rejection_sample, topk
    from reference.tree import Tree

    rng = np.random.default_rng(104)
    centres = rng.standard_normal((6, 5))
    points = centres[rng.integers(0, 6, 300)] + 0.3 * rng.standard_normal((300, 5))
    queries = rng.standard_normal((4, 5)) * np.array([[0.5], [1.5], [3.0], [6.0]])
    tree = Tree.build(points, branching=4, seed=0)
    out: dict[str, np.ndarray] = {
        "meta": _meta(
            "reference.tree / bounds / sampling on fixed points",
            {
                "points, queries": "inputs",
                "tree_*": "Tree.build(points, branching=4, seed=0) arrays",
                "lo_<tol>, hi_<tol>, log_z_hat_<tol>": "log_partition_bracket(tree, queries, adaptive_cut(tree, queries, tol))",
                "topk_ids, topk_logits": "topk(tree, queries, 7)",
                "rejection_ids": "rejection_sample(tree, queries, 30, default_rng(11), tol=0.5)[0]",
                "cut_ids, cut_log_q": "cut_sample(tree, queries, 30, default_rng(12), cut=adaptive_cut(tree, queries, 1.0))",
            },
            seed=104,
        ),
        "points": points,
        "queries": queries,
        "tree_rep": np.asarray(tree.rep),
        "tree_radius": np.asarray(tree.radius),
        "tree_count": np.asarray(tree.count),
        "tree_parent": np.asarray(tree.parent),
        "tree_order": np.asarray(tree.order),
    }
    for tol in (2.0, 0.1):
        lo, hi, hat = log_partition_bracket(tree, queries, adaptive_cut(tree, queries, tol))
        out[f"lo_{tol:g}"], out[f"hi_{tol:g}"], out[f"log_z_hat_{tol:g}"] = lo, hi, hat
    out["topk_ids"], out["topk_logits"] = topk(tree, queries, 7)
    out["rejection_ids"] = rejection_sample(tree, queries, 30, np.random.default_rng(11), tol=0.5)[0]
    out["cut_ids"], out["cut_log_q"] = cut_sample(
        tree, queries, 30, np.random.default_rng(12), cut=adaptive_cut(tree, queries, 1.0)
    )
    return out


def _nystrom_case() -> dict[str, np.ndarray]:
    from reference.nystrom import NystromMap, linear, rbf, select_landmarks

    rng = np.random.default_rng(105)
    G0 = rng.standard_normal((80, 6)) / np.sqrt(6)
    G_L_map = rng.standard_normal((6, 4))
    out: dict[str, np.ndarray] = {
        "meta": _meta(
            "reference.nystrom on fixed embeddings",
            {
                "G0": "cached embeddings",
                "landmarks_uniform, landmarks_kmeanspp": "select_landmarks(G0, 10, method=..., rng=default_rng(9))",
                "<kernel>_phi, <kernel>_W, <kernel>_ghat": "NystromMap(kernel).fit(G0, landmarks_kmeanspp): features(G0), project(G_L), approximate",
                "G_L": "tanh(G0[landmarks_kmeanspp] @ M): the landmarks' current encodings",
            },
            seed=105,
        ),
        "G0": G0,
        "landmarks_uniform": select_landmarks(G0, 10, method="uniform", rng=np.random.default_rng(9)),
    }
    L = select_landmarks(G0, 10, method="kmeans++", rng=np.random.default_rng(9))
    out["landmarks_kmeanspp"] = L
    G_L = np.tanh(G0[L] @ G_L_map)
    out["G_L"] = G_L
    for name, kernel in (("linear1", linear(1.0)), ("rbf", rbf(0.7))):
        nm = NystromMap(kernel).fit(G0, L)
        phi, W = nm.features(G0), nm.project(G_L)
        out[f"{name}_phi"], out[f"{name}_W"], out[f"{name}_ghat"] = phi, W, nm.approximate(phi, W)
    return out


#: name -> function computing the case's arrays (file ``<name>.npz``).
CASES: dict[str, Callable[[], dict[str, np.ndarray]]] = {
    "softmax": _softmax_case,
    "encoder": _encoder_case,
    "data": _data_case,
    "index": _index_case,
    "nystrom": _nystrom_case,
}


def _directory(directory: str | Path | None) -> Path:
    return GOLDEN_DIR if directory is None else Path(directory)


def _names(names: Iterable[str] | None) -> list[str]:
    if names is None:
        return list(CASES)
    out = list(names)
    unknown = sorted(set(out) - set(CASES))
    if unknown:
        raise ValueError(f"names: expected some of {sorted(CASES)}, got unknown {unknown}")
    return out


def compute(name: str) -> dict[str, np.ndarray]:
    """Recompute the arrays of golden case ``name`` with the current reference."""
    (name,) = _names([name])
    return {k: np.asarray(v) for k, v in CASES[name]().items()}


def load(name: str, directory: str | Path | None = None) -> dict[str, np.ndarray]:
    """Load ``<directory>/<name>.npz`` with ``allow_pickle=False``.

    Raises ``ValueError`` when the file is missing or damaged (unreadable zip,
    bad checksum, truncated), so that ``--golden check`` reports it as a FAIL line.
    """
    path = _directory(directory) / f"{name}.npz"
    if not path.is_file():
        raise ValueError(f"golden file {path} does not exist; run `python -m reference conformance --golden regenerate`")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception as exc:  # a flipped byte (bad CRC, zlib error) or a truncated zip: a finding, not a crash
        raise ValueError(
            f"golden file {path} is damaged: {type(exc).__name__}: {exc}; restore it from version control "
            "(or, after an intended change, run `python -m reference conformance --golden regenerate`)"
        ) from None


def save(name: str, arrays: dict[str, np.ndarray], directory: str | Path | None = None) -> Path:
    """Write ``arrays`` to ``<directory>/<name>.npz`` (compressed; refuses object arrays)."""
    for k, v in arrays.items():
        if np.asarray(v).dtype.kind == "O":
            raise ValueError(f"{name}[{k!r}]: object arrays would need pickle; expected numbers or strings")
    d = _directory(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.npz"
    np.savez_compressed(path, **arrays)
    return path


def compare(got: dict[str, np.ndarray], want: dict[str, np.ndarray], *, rtol: float = RTOL) -> list[str]:
    """Differences between recomputed and stored arrays, one line each (empty: they agree).

    Floats agree when ``|got - want| <= rtol * max(|want|, max |want over the array|
    * 1e-3)`` entrywise (relative, with a floor for entries near zero);
    integers, booleans and strings must be equal.
    """
    problems = []
    for key in sorted(set(want) - set(got)):
        problems.append(f"{key}: stored but no longer computed")
    for key in sorted(set(got) - set(want)):
        problems.append(f"{key}: computed but not stored (regenerate?)")
    for key in sorted(set(got) & set(want)):
        g, w = np.asarray(got[key]), np.asarray(want[key])
        if g.shape != w.shape:
            problems.append(f"{key}: shape {g.shape}, stored {w.shape}")
        elif w.dtype.kind == "f" or g.dtype.kind == "f":
            if g.dtype.kind not in "fiu":
                problems.append(f"{key}: dtype {g.dtype}, stored {w.dtype}")
                continue
            g64, w64 = g.astype(np.float64), w.astype(np.float64)
            scale = np.maximum(np.abs(w64), 1e-3 * (np.abs(w64).max() if w64.size else 0.0))
            err = np.abs(g64 - w64) - rtol * scale
            if w64.size and not (np.isfinite(g64).all() and (err <= 0).all()):
                i = np.unravel_index(int(np.argmax(np.where(np.isfinite(err), err, np.inf))), w.shape)
                problems.append(
                    f"{key}: at index {tuple(int(j) for j in i)} computed {g64[i]!r}, stored {w64[i]!r} "
                    f"(relative tolerance {rtol:g})"
                )
        elif not np.array_equal(g, w):
            diff = np.argwhere(g != w)
            i = tuple(int(j) for j in diff[0]) if diff.size else ()
            problems.append(f"{key}: {int(diff.shape[0])} entries differ, first at {i}: computed {g[i]!r}, stored {w[i]!r}")
    return problems


def check(directory: str | Path | None = None, names: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Recompute every case and compare with the stored file: ``name -> problems``."""
    out = {}
    for name in _names(names):
        try:
            want = load(name, directory)
        except ValueError as exc:
            out[name] = [str(exc)]
            continue
        out[name] = compare(compute(name), want)
    return out


def regenerate(directory: str | Path | None = None, names: Iterable[str] | None = None) -> list[Path]:
    """Recompute and overwrite the golden files; returns the paths written."""
    return [save(name, compute(name), directory) for name in _names(names)]


def cli(action: str, directory: str | Path | None = None) -> int:
    """``--golden check`` (exit 1 on any difference) or ``--golden regenerate``."""
    if action == "regenerate":
        for path in regenerate(directory):
            print(f"wrote {path} ({path.stat().st_size} bytes)")
        return 0
    if action != "check":
        raise ValueError(f"--golden: expected 'check' or 'regenerate', got {action!r}")
    results = check(directory)
    bad = [name for name, problems in results.items() if problems]
    print(f"FAIL: golden files that do not match or cannot be read: {', '.join(bad)}" if bad
          else f"PASS: all {len(results)} golden files match the reference")
    failed = 0
    for name, problems in results.items():
        if problems:
            failed += 1
            print(f"FAIL  {name}: {len(problems)} problem(s)")
            for line in problems[:20]:
                print(f"        {line}")
        else:
            print(f"PASS  {name}")
    print(f"RESULT: {'FAIL' if failed else 'PASS'}: {len(CASES) - failed} of {len(CASES)} golden files match the reference")
    return 1 if failed else 0
