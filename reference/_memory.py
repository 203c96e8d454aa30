"""The inventory of arrays behind the memory accounting; internal, not public API.

proofs/README.md sections 5.4 and 8. The memory accounting counts *arrays*,
each with its shape, its item size, where it lives (``"host"`` or
``"accelerator"``) and how long (``"kept"`` between steps, ``"step"``: built
and freed within every training step, ``"refresh"``: only at a step that
re-encodes all targets). This module holds what two modules share: the
:class:`Array` record and the inventories of the index's arrays,
:func:`tree_arrays` (one :class:`reference.tree.Tree`) and
:func:`index_arrays` (one :class:`reference.dynamic.DynamicIndex`), used by
``DynamicIndex.memory()`` and by :func:`reference.miners.memory_accounting`
(which adds the encoder's passes and the rule of its module docstring). The
inventories list every array attribute of the objects; tests/test_dynamic.py
and tests/test_miners.py hold them against the ``.nbytes`` of the real
objects, so a new array in ``Tree`` or ``DynamicIndex`` must be added here.

The module is private as a whole, so its names carry no leading underscore.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

#: Bytes of one float64 (``Tree`` and ``DynamicIndex`` store float64 whatever
#: the encoder's dtype).
FLOAT64 = 8
#: Bytes of one id or count (int64).
ID = 8
#: Bytes of one flag (bool).
FLAG = 1

PLACES = ("host", "accelerator")
LIFETIMES = ("kept", "step", "refresh")


@dataclass(frozen=True)
class Array:
    """One array of the accounting: ``shape`` items of ``itemsize`` bytes, at ``where``, for ``when``.

    Attributes
    ----------
    name : str
        What it is, in the spec's names (e.g. ``"phi (tree points)"``).
    shape : tuple of int
    itemsize : int
        Bytes per item.
    where : {"host", "accelerator"}
    when : {"kept", "step", "refresh"}
        ``kept``: held between steps; ``step``: held during every step;
        ``refresh``: held only during a step that re-encodes all targets.
    """

    name: str
    shape: tuple[int, ...]
    itemsize: int
    where: str
    when: str

    def __post_init__(self) -> None:
        if self.where not in PLACES or self.when not in LIFETIMES:
            raise ValueError(f"Array {self.name!r}: expected where in {PLACES} and when in {LIFETIMES}, "
                             f"got {self.where!r}, {self.when!r}")

    @property
    def nbytes(self) -> int:
        """Bytes: the product of ``shape`` times ``itemsize``."""
        return math.prod(int(w) for w in self.shape) * int(self.itemsize)


def total(arrays: Iterable[Array], where: str, when: Iterable[str] = LIFETIMES) -> int:
    """Bytes of the arrays at ``where`` whose lifetime is in ``when``."""
    when = tuple(when)
    return sum(a.nbytes for a in arrays if a.where == where and a.when in when)


def tree_arrays(capacity: int, n_live: int, k: int, nodes: int) -> list[Array]:
    """Every array of a ``Tree`` over ``capacity`` ids (``n_live`` live) in dimension k with M = ``nodes``.

    Bytes: 8 ((capacity + n_live) k + M (k + 2)) floats (points, points_dfs,
    rep, radius, rep_norm) + 8 (capacity + n_live + 7 M) ids (leaf_of,
    order, count, parent, depth, start, stop, child_ptr, child_idx) +
    (capacity + M) flags (alive, is_leaf); all on the host, kept.
    """
    N, L, M = int(capacity), int(n_live), int(nodes)
    F, I, B = FLOAT64, ID, FLAG
    spec = [
        ("tree points (capacity x k)", (N, k), F), ("tree points_dfs (live x k)", (L, k), F),
        ("tree alive", (N,), B), ("tree leaf_of", (N,), I), ("tree order", (L,), I),
        ("tree rep", (M, k), F), ("tree radius", (M,), F), ("tree rep_norm", (M,), F),
        ("tree count", (M,), I), ("tree parent", (M,), I), ("tree depth", (M,), I),
        ("tree start", (M,), I), ("tree stop", (M,), I), ("tree is_leaf", (M,), B),
        ("tree child_ptr", (M + 1,), I), ("tree child_idx", (max(M - 1, 0),), I),
    ]  # fmt: skip
    return [Array(name, shape, size, "host", "kept") for name, shape, size in spec]


def index_arrays(capacity: int, n_live: int, d: int, m: int, nodes: int) -> list[Array]:
    """Every array of a ``DynamicIndex`` (proofs/README.md section 5.4), with its place in a deployment.

    Host, kept: the cache g_s (capacity x d), the tree over phi (k = m,
    :func:`tree_arrays`; its points *are* phi), the landmark ids, their
    anchor rows g_0(L) (m x d), the eigenvalues of K_LL (m) and W_0 (m x d).
    Accelerator, kept: K_LL^{-1/2} (m x m) and W_t (m x d), the two arrays a
    training step multiplies by (W_t = K_LL^{-1/2} G_t(L), psi_t = beta W_t f_t(x)).
    """
    F = FLOAT64
    return [
        Array("cache g_s", (capacity, d), F, "host", "kept"),
        *tree_arrays(capacity, n_live, m, nodes),
        Array("landmark ids L", (m,), ID, "host", "kept"),
        Array("anchor g_0(L)", (m, d), F, "host", "kept"),
        Array("eigenvalues of K_LL", (m,), F, "host", "kept"),
        Array("W_0", (m, d), F, "host", "kept"),
        Array("K_LL^{-1/2}", (m, m), F, "accelerator", "kept"),
        Array("W_t", (m, d), F, "accelerator", "kept"),
    ]
