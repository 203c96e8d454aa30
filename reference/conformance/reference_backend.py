"""The reference itself as a backend of the five protocols (it must pass its own kit).

``python -m reference conformance reference.conformance:REFERENCE_BACKEND``
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reference.conformance.nystrom import kernel_object

__all__ = ["ReferenceBackend", "REFERENCE_BACKEND"]


class ReferenceBackend:
    """The reference implementation behind the five protocols.

    ``sample`` builds a :class:`reference.tree.Tree` and draws with the
    exact rejection sampler (P6); ``bracket`` uses an adaptive cut (P7);
    ``topk`` the tree's branch and bound (P8); ``encoder`` the NumPy
    oracle; ``nystrom`` :class:`reference.nystrom.NystromMap`. It doubles as
    an example of how to adapt an implementation to the protocols.
    """

    def sample(self, points: np.ndarray, queries: np.ndarray, n: int, seed: int) -> np.ndarray:
        from reference.sampling import rejection_sample
        from reference.tree import Tree

        tree = Tree.build(points, seed=0)
        ids, _ = rejection_sample(tree, queries, n, np.random.default_rng(seed))
        return ids

    def encoder(
        self,
        params: dict[str, np.ndarray],
        config: dict[str, Any],
        X: np.ndarray,
        pos: np.ndarray,
        Y: np.ndarray,
        neg: np.ndarray | None = None,
        log_q: np.ndarray | None = None,
    ) -> tuple[float, dict[str, np.ndarray]]:
        from reference.encoder import DualEncoder, EncoderConfig

        enc = DualEncoder(EncoderConfig(**config))
        enc.set_params(params)
        if neg is None:
            return enc.full_softmax_loss(X, pos, Y)
        return enc.sampled_softmax_loss(X, pos, Y, neg, log_q)

    def bracket(self, points: np.ndarray, queries: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
        from reference.bounds import adaptive_cut, log_partition_bracket
        from reference.tree import Tree

        tree = Tree.build(points, seed=0)
        lo, hi, _ = log_partition_bracket(tree, queries, adaptive_cut(tree, queries, tol))
        return lo, hi

    def topk(self, points: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
        from reference.sampling import topk
        from reference.tree import Tree

        ids, _ = topk(Tree.build(points, seed=0), queries, k)
        return ids

    def nystrom(
        self, G0: np.ndarray, landmarks: np.ndarray, G_L: np.ndarray, kernel: dict[str, Any]
    ) -> np.ndarray:
        from reference.nystrom import NystromMap

        nm = NystromMap(kernel_object(kernel)).fit(G0, landmarks)
        return nm.approximate(nm.features(G0), nm.project(G_L))

    def __repr__(self) -> str:
        return "ReferenceBackend()"


#: ``python -m reference conformance reference.conformance:REFERENCE_BACKEND``
REFERENCE_BACKEND = ReferenceBackend()


