"""First-order optimisers that update a flat parameter dict in place.

The dual encoder (:mod:`reference.encoder`) keeps its parameters in
``model.params`` (name -> array); an optimiser holds that same dict and
overwrites the arrays in place on :meth:`step`, so the model sees the update
without any copying. Optimiser state is a flat dict of plain arrays and ints
(``state_dict``), which can be written to ``.npz`` and read back with
``allow_pickle=False``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from reference._validation import as_float_array, check_int, check_nonnegative, check_positive

__all__ = ["Adam", "SGD"]


def _check_params(params: Any) -> dict[str, np.ndarray]:
    if not isinstance(params, dict) or not params:
        raise ValueError(f"params: expected a non-empty dict name -> array, got {type(params).__name__}")
    for name, p in params.items():
        if not isinstance(p, np.ndarray) or p.dtype not in (np.float32, np.float64):
            raise ValueError(f"params[{name!r}]: expected a float32/float64 numpy array (updated in place), got {p!r:.80}")
    return params


def _check_grads(params: dict[str, np.ndarray], grads: Any) -> dict[str, np.ndarray]:
    """Validate ``grads`` against ``params`` (same names, shapes; finite) before any update."""
    if not isinstance(grads, Mapping):
        raise ValueError(f"grads: expected a dict name -> array, got {type(grads).__name__}")
    missing = sorted(set(params) - set(grads))
    extra = sorted(set(grads) - set(params))
    if missing or extra:
        raise ValueError(f"grads: expected exactly the parameter names; missing {missing}, unexpected {extra}")
    return {
        name: as_float_array(grads[name], f"grads[{name!r}]", shape=p.shape, dtype=p.dtype, allow_empty=True)
        for name, p in params.items()
    }


def _check_state(
    state: Any, expected: dict[str, tuple[int, ...]], params: dict[str, np.ndarray]
) -> tuple[int, dict[str, np.ndarray]]:
    """Validate a state dict: key "step" (int >= 0) plus arrays of the expected shapes."""
    if not isinstance(state, Mapping):
        raise ValueError(f"state: expected a dict, got {type(state).__name__}")
    keys = set(expected) | {"step"}
    missing = sorted(keys - set(state))
    extra = sorted(set(state) - keys)
    if missing or extra:
        raise ValueError(f"state: expected keys {sorted(keys)}; missing {missing}, unexpected {extra}")
    step = state["step"]
    if isinstance(step, np.ndarray) and step.shape == ():  # as read back from .npz
        step = step.item()
    step = check_int(step, "state['step']", low=0)
    arrays = {}
    for key, shape in expected.items():
        dtype = params[key.split(".", 1)[1]].dtype
        arrays[key] = as_float_array(state[key], f"state[{key!r}]", shape=shape, dtype=dtype, allow_empty=True)
    return step, arrays


class Adam:
    """Adam with bias correction (Kingma & Ba 2015, Algorithm 1).

    For each parameter p with gradient g, at step t = 1, 2, ...::

        m <- beta1 m + (1 - beta1) g
        v <- beta2 v + (1 - beta2) g^2
        p <- p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    Parameters
    ----------
    params : dict[str, ndarray]
        The parameters to update in place (e.g. ``model.params``).
    lr : float, default 1e-3
        Step size, > 0.
    betas : (float, float), default (0.9, 0.999)
        Decay rates of the first and second moment estimates, each in [0, 1).
    eps : float, default 1e-8
        Added to the denominator, >= 0. (Adam's epsilon, not eps_v of proofs/README.md section 2.)

    References
    ----------
    D. P. Kingma and J. Ba, "Adam: A Method for Stochastic Optimization",
    ICLR 2015.
    """

    def __init__(
        self,
        params: dict[str, np.ndarray],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = _check_params(params)
        self.lr = check_positive(lr, "lr")
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"betas: expected a pair (beta1, beta2), got {betas!r}") from None
        b1, b2 = check_nonnegative(b1, "betas[0]"), check_nonnegative(b2, "betas[1]")
        if b1 >= 1 or b2 >= 1:
            raise ValueError(f"betas: expected values in [0, 1), got {betas!r}")
        self.betas = (b1, b2)
        self.eps = check_nonnegative(eps, "eps")
        self.t = 0
        self.m = {name: np.zeros_like(p) for name, p in params.items()}
        self.v = {name: np.zeros_like(p) for name, p in params.items()}

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        """Apply one Adam update to every parameter (validated first, then applied).

        Parameters
        ----------
        grads : dict[str, ndarray]
            Gradient for every parameter name (same shapes, finite).
        """
        g_all = _check_grads(self.params, grads)
        self.t += 1
        b1, b2 = self.betas
        c1 = 1 - b1**self.t  # bias corrections
        c2 = 1 - b2**self.t
        for name, p in self.params.items():
            g = g_all[name]
            m, v = self.m[name], self.v[name]
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            p -= (self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)).astype(p.dtype, copy=False)

    def state_dict(self) -> dict[str, Any]:
        """Optimiser state: ``{"step": int, "m.<name>": array, "v.<name>": array}`` (copies)."""
        state: dict[str, Any] = {"step": int(self.t)}
        for name in self.params:
            state[f"m.{name}"] = self.m[name].copy()
            state[f"v.{name}"] = self.v[name].copy()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state written by :meth:`state_dict` (validated before anything changes)."""
        expected = {f"{k}.{name}": p.shape for name, p in self.params.items() for k in ("m", "v")}
        step, arrays = _check_state(state, expected, self.params)
        if any((arrays[f"v.{name}"] < 0).any() for name in self.params):
            raise ValueError("state: expected second-moment estimates v >= 0, got a negative entry")
        self.t = step
        for name in self.params:
            self.m[name][...] = arrays[f"m.{name}"]
            self.v[name][...] = arrays[f"v.{name}"]


class SGD:
    """Stochastic gradient descent with optional heavy-ball momentum.

    buf <- momentum * buf + g;  p <- p - lr * buf   (buf = g when momentum = 0).

    Parameters
    ----------
    params : dict[str, ndarray]
        The parameters to update in place.
    lr : float
        Step size, > 0.
    momentum : float, default 0.0
        In [0, 1).
    """

    def __init__(self, params: dict[str, np.ndarray], lr: float = 1e-2, momentum: float = 0.0) -> None:
        self.params = _check_params(params)
        self.lr = check_positive(lr, "lr")
        self.momentum = check_nonnegative(momentum, "momentum")
        if self.momentum >= 1:
            raise ValueError(f"momentum: expected a value in [0, 1), got {momentum!r}")
        self.t = 0
        self.buf = {name: np.zeros_like(p) for name, p in params.items()}

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        """Apply one SGD update to every parameter (validated first, then applied)."""
        g_all = _check_grads(self.params, grads)
        self.t += 1
        for name, p in self.params.items():
            buf = self.buf[name]
            buf *= self.momentum
            buf += g_all[name]
            p -= (self.lr * buf).astype(p.dtype, copy=False)

    def state_dict(self) -> dict[str, Any]:
        """Optimiser state: ``{"step": int, "buf.<name>": array}`` (copies)."""
        state: dict[str, Any] = {"step": int(self.t)}
        for name in self.params:
            state[f"buf.{name}"] = self.buf[name].copy()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state written by :meth:`state_dict` (validated before anything changes)."""
        expected = {f"buf.{name}": p.shape for name, p in self.params.items()}
        step, arrays = _check_state(state, expected, self.params)
        self.t = step
        for name in self.params:
            self.buf[name][...] = arrays[f"buf.{name}"]
