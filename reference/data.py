"""Seeded synthetic retrieval datasets with hierarchical cluster structure.

proofs/README.md section 7. Targets come from a hierarchical Gaussian mixture; each query
is a fixed non-linear map of its positive target's features plus Gaussian
noise, so that a dual encoder has something real to learn (the map) and
hard negatives exist (the target's cluster-mates).

Generative model (all scales per coordinate are divided by sqrt(dim), so
squared norms are O(1) whatever the dimension):

* Targets, :func:`make_targets`. A tree of cluster centres with ``depth``
  levels and ``branching`` children per centre. Level-1 centres are
  N(0, I/dim); a level-l centre (l = 2..depth) is its parent plus
  N(0, spread^(2(l-1)) I/dim); a target is its leaf centre plus
  N(0, spread^(2 depth) I/dim). Each target picks its leaf uniformly, so
  ``clusters[y, l]`` in [0, branching^(l+1)) is the id of its level-(l+1)
  centre. With spread < 1 the spread shrinks geometrically down the tree:
  targets sharing a deeper centre are closer.
* Queries, :func:`make_dataset`. A fixed random two-layer tanh map
  x_clean = tanh(y A + c) B (A, c, B drawn from the dataset seed, A scaled so
  the pre-activations have standard deviation 2: tanh saturates noticeably),
  then x = x_clean + noise * s * N(0, I) where s is the root-mean-square
  coordinate of x_clean over all targets. ``queries_per_target`` queries per
  target are drawn; they are shuffled and split into train and test, so test
  queries' targets are among the N targets (and mostly also have training
  queries).

How hard the default task is (N = 1000, seed 0, test recall@1; chance 0.001;
pinned by ``tests/test_data.py``): nearest target to the raw query 0.002 (the
map is non-linear, the spaces unrelated); nearest clean query under the *true*
map 0.95 (noise = 0 gives 1.0: the noise, not the map, makes cluster-mates
hard negatives); least squares x -> y then nearest target 0.31; ridge
regression on 1024 random Fourier features of x 0.48. At N = 2000 a small MLP dual
encoder trained with the full softmax reaches ~0.5 within a few hundred Adam
steps, against 0.88 for the true map and 0.21 for least squares.

Reproducibility: the same ``seed`` gives bit-identical arrays; ``dtype=float32``
gives the float64 arrays rounded to float32 (random numbers are always drawn in
float64, in fixed-size row chunks, and written into the output).

A user's own data: :func:`load_dataset` reads query features, target features
and positives from ``.npy`` files (``compare --queries/--targets/--positives``,
paths kept in a :class:`DataFiles`), validates them and splits the queries by a
documented seeded rule into the same :class:`RetrievalData`.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reference._validation import (
    MAX_ABS_COORD,
    as_float_array,
    as_index_array,
    check_int,
    check_nonnegative,
    check_positive,
    npy_data_bytes,
    read_npy_header,
    read_regular_file,
)

__all__ = ["RetrievalData", "DataFiles", "make_targets", "make_isotropic", "make_dataset", "load_dataset"]

# Rows generated per chunk: bounds the float64 temporaries to ~16 MiB per
# 32 columns whatever N is (memory stays proportional to the output).
_CHUNK = 1 << 16
# Refuse trees whose centre table alone would be absurdly large.
_MAX_LEAF_CLUSTERS = 1 << 22
# Standard deviation of the query map's pre-activations (see make_dataset).
_MAP_GAIN = 2.0

SeedLike = int | np.random.Generator | None


@dataclass
class RetrievalData:
    """A retrieval dataset (proofs/README.md section 7): synthetic, or a user's (:func:`load_dataset`).

    Attributes
    ----------
    targets : numpy.ndarray, shape (N, dim)
        Target features y (input of the target tower).
    train_x : numpy.ndarray, shape (n_train, query_dim)
        Training query features x (input of the query tower).
    train_pos : numpy.ndarray of int64, shape (n_train,)
        Positive target id of each training query.
    test_x : numpy.ndarray, shape (n_test, query_dim)
        Test query features.
    test_pos : numpy.ndarray of int64, shape (n_test,)
        Positive target id of each test query.
    clusters : numpy.ndarray of int64, shape (N, depth)
        ``clusters[y, l]`` is the id of target y's level-(l+1) centre, in
        [0, branching^(l+1)); column ``depth - 1`` is the leaf cluster.
        Shape (N, 0) for a user's dataset (no known clusters).
    config : dict
        Every argument of :func:`make_dataset` plus derived quantities
        (``noise_std``, ``map_hidden``, ``n_train``, ``n_test``); for
        :func:`load_dataset`, its arguments and ``n_train``, ``n_test``.
    """

    targets: np.ndarray
    train_x: np.ndarray
    train_pos: np.ndarray
    test_x: np.ndarray
    test_pos: np.ndarray
    clusters: np.ndarray
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def n_targets(self) -> int:
        """Number of targets N."""
        return int(self.targets.shape[0])


def _resolve_rng(seed: SeedLike, rng: np.random.Generator | None) -> np.random.Generator:
    """One source of randomness: an int seed (default 0) or a Generator, not both."""
    if rng is not None and seed is not None:
        raise ValueError("seed, rng: expected at most one of them, got both")
    if rng is None:
        rng = 0 if seed is None else seed
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (bool, np.bool_)) or not isinstance(rng, (int, np.integer)) or int(rng) < 0:
        raise ValueError(
            f"seed: expected a non-negative integer or a numpy.random.Generator, got {type(rng).__name__} {rng!r}"
        )
    return np.random.default_rng(int(rng))


def _check_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype: expected float32 or float64, got {dtype!r}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype: expected float32 or float64, got {dt}")
    return dt


def _check_out(out: Any, n: int, dim: int, dt: np.dtype) -> None:
    """``out`` must be None or a writable (n, dim) ndarray of dtype ``dt``; else ``ValueError``."""
    if out is None:
        return
    if not isinstance(out, np.ndarray):
        raise ValueError(f"out: expected a numpy array (or np.memmap) or None, got {type(out).__name__}")
    if out.shape != (n, dim) or out.dtype != dt:
        raise ValueError(f"out: expected shape {(n, dim)} and dtype {dt}, got shape {out.shape} dtype {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out: expected a writable array, got a read-only one")


def _check_tree_shape(depth: Any, branching: Any, spread: Any) -> tuple[int, int, float]:
    depth = check_int(depth, "depth", low=1)
    branching = check_int(branching, "branching", low=1)
    spread = check_positive(spread, "spread")
    if branching**depth > _MAX_LEAF_CLUSTERS:
        raise ValueError(
            f"depth, branching: expected branching**depth <= {_MAX_LEAF_CLUSTERS} leaf clusters, "
            f"got {branching}**{depth} = {branching**depth}"
        )
    return depth, branching, spread


def _gaussian_rows(out: np.ndarray, rng: np.random.Generator, scale: float, offsets: np.ndarray | None = None,
                   index: np.ndarray | None = None) -> np.ndarray:
    """Fill ``out`` (N, dim) with ``offsets[index] + scale * N(0, I)``, chunk by chunk.

    Random numbers are drawn in float64 row chunks (the stream is the same as
    one big draw), so float32 output is the float64 output rounded.
    """
    N, dim = out.shape
    for lo in range(0, N, _CHUNK):
        hi = min(lo + _CHUNK, N)
        block = rng.standard_normal((hi - lo, dim))
        block *= scale
        if offsets is not None:
            block += offsets[index[lo:hi]]
        out[lo:hi] = block
    return out


def make_targets(
    n: int,
    dim: int,
    *,
    depth: int = 3,
    branching: int = 8,
    spread: float = 0.5,
    seed: SeedLike = None,
    rng: np.random.Generator | None = None,
    dtype: Any = np.float64,
    return_clusters: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Targets from a hierarchical Gaussian mixture (proofs/README.md section 7).

    Level-1 centres ~ N(0, I/dim); each level-l centre = parent +
    N(0, spread^(2(l-1)) I/dim); each target = a uniformly chosen leaf centre +
    N(0, spread^(2 depth) I/dim). E||y||^2 = sum_{l=0}^{depth} spread^(2l).

    Cost: O(branching^depth * dim) for the centres plus O(n * dim) for the
    targets, generated in chunks: ``make_targets(1_000_000, 32)`` takes about a
    second and holds no (n x clusters) temporaries.

    Parameters
    ----------
    n : int
        Number of targets N >= 1.
    dim : int
        Feature dimension >= 1.
    depth : int, default 3
        Number of centre levels (>= 1).
    branching : int, default 8
        Children per centre (>= 1); branching**depth leaf clusters (at most 2**22).
    spread : float, default 0.5
        Ratio (> 0) by which the per-level standard deviation shrinks; < 1
        gives visibly nested clusters.
    seed : int or numpy.random.Generator, optional
        Seed (default 0) or a Generator to draw from; give ``seed`` or ``rng``.
    rng : numpy.random.Generator, optional
        Alternative to ``seed``.
    dtype : float32 or float64, default float64
        Output dtype.
    return_clusters : bool, default False
        Also return the (N, depth) cluster labels.
    out : numpy.ndarray, optional
        A writable (n, dim) array of ``dtype`` to fill and return instead of a
        new one, e.g. an ``np.memmap`` (``np.lib.format.open_memmap``) for N
        beyond RAM: the rows are written chunk by chunk, and only the (n,)
        leaf labels are held in memory. The values are those of ``out=None``.

    Returns
    -------
    targets : numpy.ndarray, shape (n, dim)
    clusters : numpy.ndarray of int64, shape (n, depth)
        Only if ``return_clusters``: ``clusters[y, l]`` in [0, branching^(l+1))
        is the id of y's level-(l+1) centre.
    """
    n = check_int(n, "n", low=1)
    dim = check_int(dim, "dim", low=1)
    depth, branching, spread = _check_tree_shape(depth, branching, spread)
    dt = _check_dtype(dtype)
    _check_out(out, n, dim, dt)
    gen = _resolve_rng(seed, rng)

    sd = 1.0 / np.sqrt(dim)
    # Centres level by level (a loop over levels, not over centres): the
    # children of centre j at the next level are rows j*b .. j*b + b - 1.
    centres = gen.standard_normal((branching, dim)) * sd
    for level in range(1, depth):
        parents = np.repeat(centres, branching, axis=0)
        centres = parents + gen.standard_normal(parents.shape) * (sd * spread**level)
    leaf = gen.integers(0, branching**depth, size=n)  # uniform leaf cluster per target
    if out is None:
        out = np.empty((n, dim), dtype=dt)
    _gaussian_rows(out, gen, sd * spread**depth, centres, leaf)
    if not return_clusters:
        return out
    # Leaf id in base `branching` has one digit per level: the level-(l+1)
    # ancestor is leaf // branching^(depth-1-l).
    divisors = branching ** np.arange(depth - 1, -1, -1, dtype=np.int64)
    clusters = leaf[:, None] // divisors[None, :]
    return out, clusters.astype(np.int64, copy=False)


def make_isotropic(
    n: int,
    dim: int,
    *,
    seed: SeedLike = None,
    rng: np.random.Generator | None = None,
    dtype: Any = np.float64,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Unclustered targets y ~ N(0, I/dim) (E||y||^2 = 1): the worst case for a tree index.

    Parameters
    ----------
    n, dim : int
        Number of targets (>= 1) and dimension (>= 1).
    seed : int or numpy.random.Generator, optional
        Seed (default 0) or a Generator; give ``seed`` or ``rng``.
    rng : numpy.random.Generator, optional
        Alternative to ``seed``.
    dtype : float32 or float64, default float64
    out : numpy.ndarray, optional
        A writable (n, dim) array of ``dtype`` to fill and return (e.g. an
        ``np.memmap``), as in :func:`make_targets`.

    Returns
    -------
    numpy.ndarray, shape (n, dim)
    """
    n = check_int(n, "n", low=1)
    dim = check_int(dim, "dim", low=1)
    dt = _check_dtype(dtype)
    _check_out(out, n, dim, dt)
    gen = _resolve_rng(seed, rng)
    return _gaussian_rows(np.empty((n, dim), dtype=dt) if out is None else out, gen, 1.0 / np.sqrt(dim))


def make_dataset(
    n_targets: int = 2000,
    *,
    dim: int = 32,
    query_dim: int | None = None,
    queries_per_target: int = 3,
    test_fraction: float = 0.2,
    depth: int = 3,
    branching: int = 8,
    spread: float = 0.5,
    noise: float = 0.25,
    seed: SeedLike = None,
    rng: np.random.Generator | None = None,
    dtype: Any = np.float64,
) -> RetrievalData:
    """A seeded retrieval dataset: clustered targets and noisy non-linear queries.

    Targets are :func:`make_targets` (``clusters`` returned too). Each query of
    target y is x = tanh(y A + c) B + noise * s * eps, eps ~ N(0, I), where
    A (dim, h), c (h,), B (h, query_dim) are fixed random weights drawn from
    the dataset seed (h = 2 * max(dim, query_dim); A scaled so every
    pre-activation has standard deviation 2 over the target distribution,
    c ~ N(0, 1/4), B ~ N(0, 1/h))
    and s is the root-mean-square coordinate of the clean queries. The map is
    smooth, so an MLP dual encoder can learn it; ``noise`` makes retrieval
    imperfect even for the true map (cluster-mates become hard negatives).

    Parameters
    ----------
    n_targets : int, default 2000
        Number of targets N >= 1.
    dim : int, default 32
        Target feature dimension.
    query_dim : int, optional
        Query feature dimension (default ``dim``).
    queries_per_target : int, default 3
        Queries generated per target (>= 1) before the split.
    test_fraction : float, default 0.2
        Fraction of queries held out for test, in (0, 1); both splits are
        non-empty.
    depth, branching, spread : see :func:`make_targets`.
    noise : float, default 0.25
        Query noise relative to the clean queries' RMS coordinate (>= 0).
    seed : int or numpy.random.Generator, optional
        Seed (default 0) or a Generator; give ``seed`` or ``rng``.
    rng : numpy.random.Generator, optional
        Alternative to ``seed``.
    dtype : float32 or float64, default float64
        Dtype of the feature arrays.

    Returns
    -------
    RetrievalData
    """
    n_targets = check_int(n_targets, "n_targets", low=1)
    dim = check_int(dim, "dim", low=1)
    query_dim = dim if query_dim is None else check_int(query_dim, "query_dim", low=1)
    queries_per_target = check_int(queries_per_target, "queries_per_target", low=1)
    test_fraction = check_positive(test_fraction, "test_fraction")
    if not test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    depth, branching, spread = _check_tree_shape(depth, branching, spread)
    noise = check_nonnegative(noise, "noise")
    dt = _check_dtype(dtype)
    n_queries = n_targets * queries_per_target
    n_test = int(round(test_fraction * n_queries))
    if not 1 <= n_test <= n_queries - 1:
        raise ValueError(
            f"test_fraction: {test_fraction!r} of {n_queries} queries leaves an empty split; "
            "expected at least one train and one test query"
        )
    gen = _resolve_rng(seed, rng)

    targets64, clusters = make_targets(
        n_targets, dim, depth=depth, branching=branching, spread=spread, rng=gen, return_clusters=True
    )
    hidden = 2 * max(dim, query_dim)
    # Per-coordinate variance of the targets: sum_{l=0}^{depth} spread^(2l) / dim.
    var_y = float(np.sum(spread ** (2.0 * np.arange(depth + 1)))) / dim
    # Pre-activations y A have standard deviation _MAP_GAIN over the target
    # distribution: tanh is then clearly non-linear (saturating) but smooth.
    A = gen.standard_normal((dim, hidden)) * (_MAP_GAIN / np.sqrt(dim * var_y))
    c = gen.standard_normal(hidden) * 0.5
    Bm = gen.standard_normal((hidden, query_dim)) / np.sqrt(hidden)
    clean = np.tanh(targets64 @ A + c) @ Bm  # (N, query_dim): clean query of every target
    s = float(np.sqrt(np.mean(clean**2)))
    noise_std = noise * s

    pos = np.repeat(np.arange(n_targets, dtype=np.int64), queries_per_target)
    x = np.empty((n_queries, query_dim), dtype=np.float64)
    _gaussian_rows(x, gen, noise_std, clean, pos)
    perm = gen.permutation(n_queries)
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    config = dict(
        n_targets=n_targets, dim=dim, query_dim=query_dim, queries_per_target=queries_per_target,
        test_fraction=test_fraction, depth=depth, branching=branching, spread=spread, noise=noise,
        seed="generator" if rng is not None or isinstance(seed, np.random.Generator) else (0 if seed is None else seed),
        dtype=dt.name, noise_std=noise_std, map_hidden=hidden,
        n_train=int(train_idx.size), n_test=int(test_idx.size),
    )
    return RetrievalData(
        targets=targets64.astype(dt, copy=False),
        train_x=x[train_idx].astype(dt, copy=False),
        train_pos=pos[train_idx],
        test_x=x[test_idx].astype(dt, copy=False),
        test_pos=pos[test_idx],
        clusters=clusters,
        config=config,
    )


# --------------------------------------------------------------------------- a user's dataset

#: Feature dtypes :func:`load_dataset` accepts (kinds): float, signed and unsigned int.
_FEATURE_KINDS = "fiu"


_NPY = "a readable .npy file"
# Longest .npy header numpy reads (its max_header_size, 10000) plus magic, version and length.
_NPY_HEADER_READ = 10_000 + 16


def _npy_from_bytes(buf: bytearray, name: str) -> np.ndarray:
    """The array of a ``.npy`` file's bytes, viewing ``buf`` (no copy), or ``ValueError`` naming ``name``.

    The header is parsed first and the bytes after it must be exactly what
    its shape and dtype need, so a forged header (say, shape (1e12, 16) in a
    144-byte file) is refused before anything is allocated. Object and
    structured dtypes are refused (they would need pickle).
    """
    if bytes(buf[:4]) == b"PK\x03\x04":
        raise ValueError(f"{name}: expected a .npy file holding one array, got a zip archive (.npz?)")
    fp = io.BytesIO(bytes(buf[:_NPY_HEADER_READ]))
    try:
        dtype, shape, fortran, header_len = read_npy_header(fp)
    except (ValueError, EOFError, SyntaxError) as exc:
        raise ValueError(f"{name}: expected {_NPY} of a numeric array (no pickles), got an unreadable header "
                         f"({type(exc).__name__}: {exc})") from None
    if dtype.hasobject or dtype.fields is not None:
        raise ValueError(f"{name}: expected {_NPY} of a numeric array (no pickles), got dtype {dtype}")
    need, have = npy_data_bytes(shape, dtype), len(buf) - header_len
    if need != have:
        raise ValueError(f"{name}: expected {_NPY} whose data matches its header, got a header claiming shape "
                         f"{shape} of {dtype} ({need} bytes) followed by {have} bytes (truncated or forged)")
    arr = np.frombuffer(buf, dtype=dtype, count=need // dtype.itemsize if dtype.itemsize else 0, offset=header_len)
    return arr.reshape(shape, order="F" if fortran else "C")


def _read(source: Any, arg: str) -> tuple[np.ndarray, str]:
    """``source`` (a ``.npy`` path or an array) as an array, and the name errors use: ``arg`` (path).

    A path is read once (:func:`reference._validation.read_regular_file`:
    regular files only, so a FIFO or ``/dev/zero`` is refused, never read).
    """
    if isinstance(source, (str, os.PathLike)):
        name = f"{arg} ({os.fspath(source)})"
        return _npy_from_bytes(read_regular_file(source, name, _NPY), name), name
    if isinstance(source, np.ndarray):
        return source, arg
    raise ValueError(f"{arg}: expected a path to a .npy file or a numpy array, got {type(source).__name__}")


_Reader = Callable[[Any, str], "tuple[np.ndarray, str]"]


def _features(source: Any, arg: str, dim: int | None = None, min_rows: int = 1, read: _Reader = _read) -> np.ndarray:
    """A 2-D finite feature array of >= ``min_rows`` rows (float32 kept; float64 otherwise), or ``ValueError``.

    Entries beyond ``MAX_ABS_COORD`` (1e150) are refused, as everywhere in the package.
    """
    arr, name = read(source, arg)
    if arr.dtype.kind not in _FEATURE_KINDS:
        raise ValueError(f"{name}: expected a real numeric dtype (float or int), got {arr.dtype}")
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        want = "(rows, features)" if dim is None else f"(rows, {dim})"
        raise ValueError(f"{name}: expected a non-empty 2-D array of shape {want}, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name}: expected {dim} feature columns (as the training queries), got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name}: expected at least {min_rows} rows, got {arr.shape[0]}")
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    out = as_float_array(arr, name, ndim=2, dtype=dtype, max_abs=MAX_ABS_COORD)
    return out.copy() if out is source else out  # never keep a caller's array (it may change)


def _positives(source: Any, arg: str, rows: int, n_targets: int, read: _Reader = _read) -> np.ndarray:
    """A 1-D int64 array of ``rows`` ids in [0, N), or ``ValueError`` naming ``arg``."""
    arr, name = read(source, arg)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected an integer dtype (target ids), got {arr.dtype}")
    if arr.shape != (rows,):
        raise ValueError(f"{name}: expected shape ({rows},) (one positive per query), got {arr.shape}")
    return as_index_array(arr, f"{name}: target ids, rows of the targets (N = {n_targets})", upper=n_targets)


def load_dataset(
    queries: Any,
    targets: Any,
    positives: Any,
    *,
    test_queries: Any = None,
    test_positives: Any = None,
    test_fraction: float = 0.2,
    split_seed: int = 0,
) -> RetrievalData:
    """A user's retrieval dataset from ``.npy`` files (or arrays), validated, as a :class:`RetrievalData`.

    Query i has the positive target ``positives[i]``, a row of ``targets``.
    Without ``test_queries`` the queries are split by a fixed seeded rule:
    ``perm = numpy.random.default_rng(split_seed).permutation(n)`` and the
    first ``round(test_fraction * n)`` of ``perm`` are the test queries, the
    rest the training queries, each kept in file order. With
    ``test_queries`` and ``test_positives`` the given split is used as is.

    Parameters
    ----------
    queries : path-like or ndarray, shape (n, d_x)
        Query features (float or int; float32 is kept, everything else
        becomes float64), finite.
    targets : path-like or ndarray, shape (N, d_y)
        Target features, N >= 2, finite.
    positives : path-like or ndarray of int, shape (n,)
        Positive target id of each query, 0 <= id < N.
    test_queries : path-like or ndarray, shape (n_test, d_x), optional
        Held-out queries; give ``test_positives`` with them.
    test_positives : path-like or ndarray of int, shape (n_test,), optional
    test_fraction : float, default 0.2
        Fraction of ``queries`` held out when no test set is given, in (0, 1);
        both parts must be non-empty.
    split_seed : int, default 0
        Seed of the split.

    Returns
    -------
    RetrievalData
        ``clusters`` has shape (N, 0); ``config`` records the sources and the split.

    Raises
    ------
    ValueError
        Naming the argument and the file, what was expected and what came:
        an unreadable or pickled file, not a regular file (a FIFO, a device),
        a ``.npy`` header that does not match the file's size, a non-numeric
        dtype, a wrong shape, NaN or infinite values or entries beyond
        ``MAX_ABS_COORD`` (1e150), non-integer positives or ids outside [0, N).
    """
    return _load_dataset(queries, targets, positives, test_queries, test_positives, test_fraction, split_seed, _read)


def _load_dataset(queries: Any, targets: Any, positives: Any, test_queries: Any, test_positives: Any,
                  test_fraction: float, split_seed: int, read: _Reader) -> RetrievalData:
    """:func:`load_dataset`, reading each path with ``read(source, arg) -> (array, name)``."""
    if (test_queries is None) != (test_positives is None):
        raise ValueError("test_queries, test_positives: expected both or neither, got "
                         f"{'test_queries' if test_positives is None else 'test_positives'} alone")
    test_fraction = check_positive(test_fraction, "test_fraction")
    if not test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    split_seed = check_int(split_seed, "split_seed", low=0)
    Y = _features(targets, "targets", min_rows=2, read=read)
    N = Y.shape[0]
    X = _features(queries, "queries", read=read)
    pos = _positives(positives, "positives", X.shape[0], N, read=read)
    if test_queries is None:
        n = X.shape[0]
        n_test = int(round(test_fraction * n))
        if not 1 <= n_test <= n - 1:
            raise ValueError(f"test_fraction: {test_fraction!r} of {n} queries leaves an empty split; "
                             "expected at least one train and one test query (or give test_queries)")
        perm = np.random.default_rng(split_seed).permutation(n)
        test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
        train_x, train_pos, test_x, test_pos = X[train_idx], pos[train_idx], X[test_idx], pos[test_idx]
    else:
        train_x, train_pos = X, pos
        test_x = _features(test_queries, "test_queries", dim=X.shape[1], read=read)
        test_pos = _positives(test_positives, "test_positives", test_x.shape[0], N, read=read)

    def source(x: Any) -> str | None:
        return os.fspath(x) if isinstance(x, (str, os.PathLike)) else None if x is None else "array"

    config = dict(
        source="user", queries=source(queries), targets=source(targets), positives=source(positives),
        test_queries=source(test_queries), test_positives=source(test_positives),
        test_fraction=None if test_queries is not None else test_fraction,
        split_seed=None if test_queries is not None else split_seed,
        n_targets=N, n_train=int(train_x.shape[0]), n_test=int(test_x.shape[0]),
    )
    return RetrievalData(targets=Y, train_x=train_x, train_pos=train_pos, test_x=test_x, test_pos=test_pos,
                         clusters=np.zeros((N, 0), dtype=np.int64), config=config)


_FILE_FIELDS = ("queries", "targets", "positives", "test_queries", "test_positives")


@dataclass(frozen=True)
class DataFiles:
    """Where a user's dataset lives: the arguments of :func:`load_dataset` as paths (JSON-ready).

    ``python -m reference compare --queries X.npy --targets Y.npy
    --positives pos.npy`` trains on these instead of the synthetic data
    (``reference.train.TrainConfig.data_files``).

    ``sha256`` (not an argument) is the SHA-256 of the files' contents, read
    when the ``DataFiles`` is made: each given file's role, size and bytes,
    in the order of the fields. It is part of the run's configuration, so a
    run records which data it used, and ``compare --resume`` refuses a
    checkpoint (or reuses a finished run) only if the files still hold the
    same bytes, not merely the same paths. Raises ``ValueError`` naming the
    file if one cannot be read or is not a regular file (a FIFO or a device
    is refused without being read).

    What a run computes on is what it records: :meth:`load` reads every file
    once into memory, checks those very bytes against the digest recorded
    here, and parses the arrays from them; a file changed since (even
    between two seeds of one ``compare``) raises ``ValueError`` naming it.
    """

    queries: str
    targets: str
    positives: str
    test_queries: str | None = None
    test_positives: str | None = None
    test_fraction: float = 0.2
    split_seed: int = 0
    sha256: str = field(init=False, default="")

    def __post_init__(self) -> None:
        for name in _FILE_FIELDS:
            value = getattr(self, name)
            if value is None and name.startswith("test_"):
                continue
            if not isinstance(value, (str, os.PathLike)):
                raise ValueError(f"{name}: expected a path to a .npy file, got {type(value).__name__}")
            object.__setattr__(self, name, os.fspath(value))
        digest, per_file = self._digest(lambda name, path: read_regular_file(path, f"{name} ({path})", _NPY))
        object.__setattr__(self, "sha256", digest)
        object.__setattr__(self, "_file_sha256", per_file)  # not a field: the configuration records only sha256

    def _digest(self, read: Callable[[str, str], bytearray]) -> tuple[str, dict[str, str]]:
        """The digest of :attr:`sha256` and one per file, over ``read(name, path)`` of each given file."""
        digest, per_file = hashlib.sha256(), {}
        for name in _FILE_FIELDS:
            path = getattr(self, name)
            if path is None:
                continue
            buf = read(name, path)
            digest.update(f"{name} {len(buf)}\n".encode())
            digest.update(buf)
            per_file[name] = hashlib.sha256(buf).hexdigest()
        return digest.hexdigest(), per_file

    def load(self) -> RetrievalData:
        """:func:`load_dataset` of these files, from bytes checked against :attr:`sha256`.

        Each file is read once; the bytes read are hashed and, if the digest
        is the recorded one, parsed. Raises ``ValueError`` naming the first
        file whose content changed since this ``DataFiles`` was made.
        """
        bufs: dict[str, bytearray] = {}

        def read_file(name: str, path: str) -> bytearray:
            bufs[name] = read_regular_file(path, f"{name} ({path})", _NPY)
            return bufs[name]

        digest, per_file = self._digest(read_file)
        if digest != self.sha256:
            name = next((n for n in per_file if per_file[n] != self._file_sha256.get(n)), "queries")
            raise ValueError(
                f"{name} ({getattr(self, name)}): the file changed since the run started (SHA-256 "
                f"{self._file_sha256.get(name, '?')[:16]}... recorded, {per_file[name][:16]}... now); a run must "
                "compute on the data it records: restore the file or start a new run")

        def read(source: Any, arg: str) -> tuple[np.ndarray, str]:
            name = f"{arg} ({source})"
            return _npy_from_bytes(bufs[arg], name), name

        return _load_dataset(self.queries, self.targets, self.positives, self.test_queries, self.test_positives,
                             self.test_fraction, self.split_seed, read)
