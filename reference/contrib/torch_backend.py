"""A PyTorch backend for the conformance kit: an independent port, validated by the kit.

It implements three of the protocols of :mod:`reference.conformance` with
PyTorch only (no NumPy oracle code is reused), as a worked example of
porting the reference and checking the port:

- ``encoder``: the dual encoder of :mod:`reference.encoder` written as a
  PyTorch module-free function, gradients by autograd (not by hand);
- ``sample``: exact softmax sampling with ``torch.multinomial`` on
  ``torch.softmax`` (which subtracts the row maximum, so logits of magnitude
  1e4 are fine);
- ``topk``: exact top-k with the reference's tie rule (smaller id first),
  by a *stable* descending sort (``torch.topk`` does not specify its order
  among ties, so it would not conform).

Run it through the kit with::

    pip install ".[torch]"
    python -m reference conformance reference.contrib.torch_backend:BACKEND

Nothing in the core package imports this module.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as tnf

from reference.encoder import NORM_EPS

__all__ = ["encoder", "sample", "topk", "BACKEND"]

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _activation(name: str, z: torch.Tensor) -> torch.Tensor:
    """The hidden-layer non-linearities of reference.encoder.ACTIVATIONS."""
    if name == "tanh":
        return torch.tanh(z)
    if name == "relu":
        return torch.relu(z)
    if name == "gelu":
        return tnf.gelu(z, approximate="tanh")  # the reference uses the tanh approximation
    if name == "softplus":
        return torch.logaddexp(z, torch.zeros_like(z))  # exact (F.softplus linearises above 20)
    if name == "identity":
        return z
    raise ValueError(f"activation: expected one of tanh, relu, gelu, softplus, identity, got {name!r}")


def _tower(params: dict[str, torch.Tensor], config: dict[str, Any], tower: str, x: torch.Tensor) -> torch.Tensor:
    """h_{l+1} = act(h_l W_l + b_l) on hidden layers, no activation on the last, optional L2 normalisation."""
    n_layers = len(config["hidden"]) + 1
    h = x
    for layer in range(n_layers):
        h = h @ params[f"{tower}.W{layer}"] + params[f"{tower}.b{layer}"]
        if layer < n_layers - 1:
            h = _activation(config["activation"], h)
    if config["normalize"]:
        # The oracle's floor (reference.encoder.NORM_EPS), so that the two agree for tiny norms too.
        norm = torch.linalg.vector_norm(h, dim=1, keepdim=True).clamp_min(NORM_EPS)
        h = h / norm
    return h


def encoder(
    params: dict[str, Any],
    config: dict[str, Any],
    X: Any,
    pos: Any,
    Y: Any,
    neg: Any = None,
    log_q: Any = None,
) -> tuple[float, dict[str, np.ndarray]]:
    """Full or sampled softmax loss of the dual encoder and its gradients by autograd.

    Parameters
    ----------
    params : dict
        ``"query.W0"``, ``"query.b0"``, ... as in :func:`reference.encoder.param_shapes`.
    config : dict
        The fields of :class:`reference.encoder.EncoderConfig`.
    X : array, shape (B, query_dim)
    pos : array of int, shape (B,)
    Y : array, shape (N, target_dim)
    neg : array of int, shape (B, n), optional
        Negatives; without them the loss is the full softmax over all of ``Y``.
    log_q : array, shape (B, n), optional
        log Q of the negatives (the logQ-corrected estimator of P13);
        without it the negatives are scored together with the positive.

    Returns
    -------
    loss : float
        Batch mean.
    grads : dict[str, numpy.ndarray]
        d loss / d param for every parameter.
    """
    dtype = _DTYPES[config["dtype"]]
    P = {k: torch.tensor(np.asarray(v), dtype=dtype, requires_grad=True) for k, v in params.items()}
    x = torch.as_tensor(np.asarray(X), dtype=dtype)
    y_all = torch.as_tensor(np.asarray(Y), dtype=dtype)
    p = torch.as_tensor(np.asarray(pos), dtype=torch.int64)
    beta = float(config["beta"])
    F = _tower(P, config, "query", x)
    rows = torch.arange(x.shape[0])
    if neg is None:
        G = _tower(P, config, "target", y_all)
        a = beta * (F @ G.T)
        loss = (torch.logsumexp(a, dim=1) - a[rows, p]).mean()
    else:
        ng = torch.as_tensor(np.asarray(neg), dtype=torch.int64)
        B, n = ng.shape
        G_pos = _tower(P, config, "target", y_all[p])
        G_neg = _tower(P, config, "target", y_all[ng.reshape(-1)]).reshape(B, n, -1)
        a_pos = beta * (F * G_pos).sum(dim=1)
        a_neg = beta * torch.einsum("bd,bnd->bn", F, G_neg)
        if log_q is None:
            log_z = torch.logsumexp(torch.cat([a_pos[:, None], a_neg], dim=1), dim=1)
        else:
            lq = torch.as_tensor(np.asarray(log_q), dtype=dtype)
            log_z = torch.logsumexp(a_neg - lq, dim=1) - float(np.log(n))  # log((1/n) sum exp(a - log Q))
        loss = (log_z - a_pos).mean()
    loss.backward()
    return float(loss.item()), {k: v.grad.detach().numpy().copy() for k, v in P.items()}


def sample(points: Any, queries: Any, n: int, seed: int) -> np.ndarray:
    """n i.i.d. ids per query from softmax(<q, z>), shape (B, n)."""
    z = torch.as_tensor(np.asarray(points), dtype=torch.float64)
    q = torch.as_tensor(np.asarray(queries), dtype=torch.float64)
    probs = torch.softmax(q @ z.T, dim=1)
    gen = torch.Generator().manual_seed(int(seed))
    return torch.multinomial(probs, int(n), replacement=True, generator=gen).numpy()


def topk(points: Any, queries: Any, k: int) -> np.ndarray:
    """The k largest logits per query, decreasing, exact ties by smaller id; shape (B, k)."""
    z = torch.as_tensor(np.asarray(points), dtype=torch.float64)
    q = torch.as_tensor(np.asarray(queries), dtype=torch.float64)
    a = q @ z.T + 0.0  # + 0.0 turns -0.0 into 0.0, so signed zeros tie
    order = torch.sort(a, dim=1, descending=True, stable=True).indices  # equal logits keep id order
    return order[:, : int(k)].numpy()


#: ``python -m reference conformance reference.contrib.torch_backend:BACKEND``
BACKEND = SimpleNamespace(encoder=encoder, sample=sample, topk=topk)
