"""Backends of the dynamic protocol that pass it: the reference's tree, and any static backend rebuilt every step.

:data:`TREE_BACKEND` adapts :class:`reference.tree.Tree` through its public
methods only (``Tree.build``, ``update``, ``insert``, ``delete``,
``rebuild``; queries by :func:`reference.sampling.topk`,
:func:`reference.sampling.rejection_sample` and
:func:`reference.bounds.adaptive_cut` / :func:`reference.bounds.log_partition_bracket`):
the index is repaired in place, never rebuilt except when the kit asks.

:func:`from_static` turns a backend of the static protocols (``topk(points,
queries, k)``, ``sample(points, queries, n, seed)``, ``bracket(points,
queries, tol)``) into a dynamic one that keeps the current vectors and hands
the static backend the live ones at every query: an index rebuilt from
scratch at every step, the baseline a repaired index must agree with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["TreeState", "TreeBackend", "TREE_BACKEND", "StaticState", "from_static", "REBUILD_BACKEND"]


def _no_rows(a: Any) -> bool:
    """Whether ``a`` is an array of zero rows (shape (0,) or (0, d))."""
    return np.ndim(a) >= 1 and np.shape(a)[0] == 0


class TreeState:
    """A :class:`reference.tree.Tree` behind the dynamic protocol (the ten lines to copy for your own index)."""

    def __init__(self, points: np.ndarray) -> None:
        from reference.tree import Tree

        self.tree = Tree.build(points, seed=0)

    # An empty step (no rows) is a no-op: the dynamic protocol allows one, Tree.update, insert and
    # delete refuse it. Anything else goes to the tree, which names what is wrong with it.
    def move(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if _no_rows(ids) and _no_rows(vectors):
            return
        self.tree.update(ids, vectors)

    def insert(self, vectors: np.ndarray) -> np.ndarray:
        if _no_rows(vectors):
            return np.zeros(0, dtype=np.int64)
        return self.tree.insert(vectors)

    def delete(self, ids: np.ndarray) -> None:
        if _no_rows(ids):
            return
        self.tree.delete(ids)

    def rebuild(self, depth: int) -> None:
        self.tree.rebuild(min(depth, int(self.tree.depth.max())))

    def topk(self, queries: np.ndarray, k: int) -> np.ndarray:
        from reference.sampling import topk

        return topk(self.tree, queries, k)[0]

    def sample(self, queries: np.ndarray, n: int, seed: int) -> np.ndarray:
        from reference.sampling import rejection_sample

        return rejection_sample(self.tree, queries, n, np.random.default_rng(seed))[0]

    def bracket(self, queries: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
        from reference.bounds import adaptive_cut, log_partition_bracket

        lo, hi, _ = log_partition_bracket(self.tree, queries, adaptive_cut(self.tree, queries, tol))
        return lo, hi


class TreeBackend:
    """``dynamic_build(points) -> TreeState``: the reference's tree, repaired in place."""

    state = TreeState

    def dynamic_build(self, points: np.ndarray) -> Any:
        return self.state(points)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


#: ``python -m reference conformance reference.conformance.dynamic_backends:TREE_BACKEND``
TREE_BACKEND = TreeBackend()


def _static(backend: Any, name: str) -> Any:
    fn = backend.get(name) if isinstance(backend, Mapping) else getattr(backend, name, None)
    return fn if callable(fn) else None


class StaticState:
    """The current vectors by id; every query calls the static backend on the live ones.

    Ids are issued consecutively and never reused. The static backend sees
    the live vectors in increasing id order (row p is the p-th live id), so
    its own tie rule (the smaller row) is the rule on ids.
    """

    def __init__(self, backend: Any, points: np.ndarray) -> None:
        self.backend = backend
        self.vectors = np.array(points, dtype=np.float64)
        self.alive = np.ones(self.vectors.shape[0], dtype=bool)
        for name in ("topk", "sample", "bracket"):  # only the backend's protocols are offered
            if _static(backend, name) is None:
                setattr(self, name, None)

    def move(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.vectors[ids] = vectors

    def insert(self, vectors: np.ndarray) -> np.ndarray:
        ids = np.arange(self.vectors.shape[0], self.vectors.shape[0] + vectors.shape[0])
        self.vectors = np.vstack([self.vectors, vectors])
        self.alive = np.concatenate([self.alive, np.ones(vectors.shape[0], dtype=bool)])
        return ids

    def delete(self, ids: np.ndarray) -> None:
        self.alive[ids] = False

    def _live(self) -> tuple[np.ndarray, np.ndarray]:
        ids = np.flatnonzero(self.alive)
        return ids, self.vectors[ids]

    def topk(self, queries: np.ndarray, k: int) -> np.ndarray:
        ids, Z = self._live()
        return ids[np.asarray(_static(self.backend, "topk")(Z, queries, k))]

    def sample(self, queries: np.ndarray, n: int, seed: int) -> np.ndarray:
        ids, Z = self._live()
        return ids[np.asarray(_static(self.backend, "sample")(Z, queries, n, seed))]

    def bracket(self, queries: np.ndarray, tol: float) -> Any:
        _, Z = self._live()
        return _static(self.backend, "bracket")(Z, queries, tol)


def from_static(backend: Any) -> Any:
    """A dynamic backend that rebuilds ``backend``'s index from scratch at every query.

    Parameters
    ----------
    backend : object or mapping
        Provides some of the static ``topk``, ``sample``, ``bracket``
        (:mod:`reference.conformance`) and optionally ``dtype``.

    Returns
    -------
    object
        With ``dynamic_build(points) -> StaticState`` and the backend's ``dtype``.
    """
    if not any(_static(backend, name) is not None for name in ("topk", "sample", "bracket")):
        raise ValueError(f"backend: expected an object providing topk, sample or bracket, got {backend!r}")
    dtype = backend.get("dtype") if isinstance(backend, Mapping) else getattr(backend, "dtype", None)

    class Rebuilt:
        def dynamic_build(self, points: np.ndarray) -> StaticState:
            return StaticState(backend, points)

        def __repr__(self) -> str:
            return f"from_static({backend!r})"

    out = Rebuilt()
    out.dtype = dtype or "float64"  # type: ignore[attr-defined]
    return out


def _reference() -> Any:
    from reference.conformance.reference_backend import REFERENCE_BACKEND

    return from_static(REFERENCE_BACKEND)


#: The reference's static backend rebuilt from scratch at every query (a tree built per call).
REBUILD_BACKEND = _reference()
