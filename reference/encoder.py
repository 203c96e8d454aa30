"""The dual-encoder oracle: two NumPy MLP towers with a hand-written backward pass.

proofs/README.md section 7. A query x is mapped by the query tower to f(x) in R^d and a
target y (given by its feature row) by the target tower to g(y) in R^d. The
model is the softmax

    P(y | x) = exp(a_y) / Z(x),    a_y = beta <f(x), g(y)>,    Z(x) = sum_y exp(a_y),

so the index's query vector is q = beta f(x) and its target vectors are
z_y = g(y) (proofs/README.md section 2). Training minimises -log P(y* | x), either exactly
(:meth:`DualEncoder.full_softmax_loss`, the gold standard: every target is
encoded) or with sampled negatives and the logQ correction
(:meth:`DualEncoder.sampled_softmax_loss`, P13).

Parameters (the names other backends are compared against)
----------------------------------------------------------
Each tower ``t`` in ``("query", "target")`` has ``L = len(hidden) + 1`` affine
layers with widths ``in_dim -> hidden[0] -> ... -> hidden[-1] -> out_dim``::

    h_0 = x                                    (B, in_dim)
    h_{l+1} = act(h_l @ W_l + b_l)             l = 0 .. L-2   (hidden layers)
    u = h_{L-1} @ W_{L-1} + b_{L-1}            (no activation on the last layer)
    out = u / max(||u||_2, NORM_EPS)  if normalize  else  u   (row-wise, NORM_EPS = 1e-12)

stored as ``params["<t>.W<l>"]`` of shape ``(width_l, width_{l+1})`` and
``params["<t>.b<l>"]`` of shape ``(width_{l+1},)``; see :func:`param_shapes`.
Initialisation (deterministic for a seed): for the query tower then the target
tower, layer by layer, ``W_l ~ N(0, gain^2 / fan_in)`` with ``gain = sqrt(2)``
for relu / gelu and 1 otherwise, drawn in float64 from one
``numpy.random.Generator`` and cast to the model dtype; ``b_l = 0``.

The backward pass is written out by hand (no autograd); the tests compare every
parameter's gradient with central finite differences.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import expit

from reference import softmax as _softmax
from reference._validation import (
    as_float_array,
    as_index_array,
    check_choice,
    check_int,
    check_positive,
)

__all__ = [
    "ACTIVATIONS",
    "DTYPES",
    "NORM_EPS",
    "EncoderConfig",
    "TowerCache",
    "DualEncoder",
    "param_shapes",
    "params_sha256",
]

#: Supported activations (applied after every hidden layer, never after the last).
ACTIVATIONS = ("tanh", "relu", "gelu", "softplus", "identity")
#: Supported parameter / activation dtypes.
DTYPES = ("float64", "float32")
#: Floor on ||u|| in the L2 normalisation out = u / max(||u||, NORM_EPS) (the
#: convention of torch.nn.functional.normalize). A row with ||u|| < NORM_EPS
#: (e.g. u = 0 exactly, as for a zero input row with zero biases) is scaled by
#: 1/NORM_EPS and its Jacobian is I / NORM_EPS: finite, never NaN or inf.
NORM_EPS = 1e-12
TOWERS = ("query", "target")

# gelu uses the tanh approximation (Hendrycks & Gimpel 2016):
#   gelu(z) = 0.5 z (1 + tanh(c (z + k z^3))),  c = sqrt(2/pi), k = 0.044715.
_GELU_C = float(np.sqrt(2.0 / np.pi))
_GELU_K = 0.044715


def _activate(name: str, z: np.ndarray) -> np.ndarray:
    """Apply the activation ``name`` element-wise."""
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.maximum(z, 0)
    if name == "gelu":
        return 0.5 * z * (1 + np.tanh(_GELU_C * (z + _GELU_K * z**3)))
    if name == "softplus":
        return np.logaddexp(0, z)  # log(1 + e^z) without overflow
    return z  # identity


def _activation_grad(name: str, z: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Derivative act'(z), element-wise; ``h = act(z)`` is passed to reuse it."""
    if name == "tanh":
        return 1 - h * h
    if name == "relu":
        return (z > 0).astype(z.dtype)  # 0 at the kink z = 0
    if name == "gelu":
        t = np.tanh(_GELU_C * (z + _GELU_K * z**3))
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _GELU_C * (1 + 3 * _GELU_K * z * z)
    if name == "softplus":
        return expit(z)  # sigmoid
    return np.ones_like(z)  # identity


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of the dual encoder (both towers share ``hidden`` and ``out_dim``).

    Parameters
    ----------
    query_dim : int
        Dimension of the query features x.
    target_dim : int
        Dimension of the target features (one row per target y).
    hidden : tuple of int, default (64,)
        Hidden widths of each tower; ``()`` gives a single affine layer.
    out_dim : int, default 32
        Embedding dimension d of f(x) and g(y).
    activation : {"tanh", "relu", "gelu", "softplus", "identity"}, default "tanh"
        Non-linearity after every hidden layer ("gelu" is the tanh approximation).
    normalize : bool, default True
        L2-normalise each tower's output row, so ||f(x)|| = ||g(y)|| = 1 and
        |a_y| <= beta.
    beta : float, default 10.0
        Softmax temperature (inverse): a_y = beta <f(x), g(y)>. Must be > 0.
    dtype : {"float64", "float32"}, default "float64"
        Dtype of parameters, activations and gradients.
    """

    query_dim: int
    target_dim: int
    hidden: tuple[int, ...] = (64,)
    out_dim: int = 32
    activation: str = "tanh"
    normalize: bool = True
    beta: float = 10.0
    dtype: str = "float64"

    def __post_init__(self) -> None:
        check_int(self.query_dim, "query_dim", low=1)
        check_int(self.target_dim, "target_dim", low=1)
        check_int(self.out_dim, "out_dim", low=1)
        try:
            hidden = tuple(self.hidden)
        except TypeError:
            raise ValueError(f"hidden: expected a sequence of positive ints, got {self.hidden!r}") from None
        for i, w in enumerate(hidden):
            check_int(w, f"hidden[{i}]", low=1)
        object.__setattr__(self, "hidden", tuple(int(w) for w in hidden))
        check_choice(self.activation, "activation", ACTIVATIONS)
        if not isinstance(self.normalize, (bool, np.bool_)):
            raise ValueError(f"normalize: expected a bool, got {self.normalize!r}")
        object.__setattr__(self, "beta", check_positive(self.beta, "beta"))
        if isinstance(self.dtype, np.dtype) or isinstance(self.dtype, type):
            # accept np.float32 / np.dtype("float32") as well as the string
            try:
                object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
            except TypeError:
                pass
        check_choice(self.dtype, "dtype", DTYPES)

    def widths(self, tower: str) -> tuple[int, ...]:
        """Layer widths of ``tower``: ``(in_dim, *hidden, out_dim)``."""
        check_choice(tower, "tower", TOWERS)
        in_dim = self.query_dim if tower == "query" else self.target_dim
        return (in_dim, *self.hidden, self.out_dim)


def param_shapes(config: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of all parameters, in initialisation order.

    Returns
    -------
    dict
        ``"<tower>.W<l>" -> (width_l, width_{l+1})`` and
        ``"<tower>.b<l>" -> (width_{l+1},)`` for tower in ("query", "target")
        and l = 0 .. len(hidden); the layer computes ``h @ W + b``.
    """
    if not isinstance(config, EncoderConfig):
        raise ValueError(f"config: expected an EncoderConfig, got {type(config).__name__}")
    shapes: dict[str, tuple[int, ...]] = {}
    for tower in TOWERS:
        w = config.widths(tower)
        for layer in range(len(w) - 1):
            shapes[f"{tower}.W{layer}"] = (w[layer], w[layer + 1])
            shapes[f"{tower}.b{layer}"] = (w[layer + 1],)
    return shapes


def params_sha256(params: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a set of parameters: for every name in sorted order, its name, dtype, shape and bytes.

    Two models agree on this digest iff their parameters agree bitwise (names,
    dtypes, shapes and values; up to SHA-256 collisions). It is the
    ``params_sha256`` that ``python -m reference demo --out`` and
    ``python -m reference compare`` write, by which a resumed run is compared
    with an uninterrupted one.

    Parameters
    ----------
    params : mapping of str to array_like
        E.g. :attr:`DualEncoder.params`.

    Returns
    -------
    str
        64 hexadecimal digits.
    """
    if not isinstance(params, Mapping) or not all(isinstance(name, str) for name in params):
        raise ValueError(f"params: expected a mapping of parameter names (str) to arrays, got {type(params).__name__}")
    h = hashlib.sha256()
    for name in sorted(params):
        a = np.ascontiguousarray(params[name])
        if a.dtype.hasobject:
            raise ValueError(f"params[{name!r}]: expected a numeric array, got dtype {a.dtype}")
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass
class TowerCache:
    """What a tower's forward pass keeps for its backward pass.

    Attributes
    ----------
    tower : str
        "query" or "target".
    h : list of ndarray
        Layer inputs h_0 = x, h_1, ..., h_{L-1}.
    z : list of ndarray
        Pre-activations z_l = h_l @ W_l + b_l (z_{L-1} = u, the unnormalised output).
    norm : ndarray or None
        Clamped row norms max(||u||, NORM_EPS), shape (B, 1), when the tower
        normalises, else None.
    small : ndarray or None
        Rows with ||u|| < NORM_EPS (B, 1) bool, when the tower normalises.
    out : ndarray
        The tower output (f or g), (B, out_dim).
    """

    tower: str
    h: list[np.ndarray] = field(default_factory=list)
    z: list[np.ndarray] = field(default_factory=list)
    norm: np.ndarray | None = None
    small: np.ndarray | None = None
    out: np.ndarray | None = None


class DualEncoder:
    """Two MLP towers f (queries) and g (targets) with a hand-written backward pass.

    proofs/README.md section 7. Logits are a = beta F G^T with F = f(X), G = g(Y).

    Parameters
    ----------
    config : EncoderConfig
        Architecture (see the module docstring for the parameter layout).
    seed : int or numpy.random.Generator, default 0
        Seed for the deterministic initialisation.

    Attributes
    ----------
    params : dict[str, ndarray]
        All parameters, names as in :func:`param_shapes`. Optimisers update
        these arrays in place; :meth:`set_params` also writes in place.
    target_rows_encoded : int
        Number of rows passed through the target tower so far (the cost
        measure "target-encoder forward passes" of proofs/README.md section 8).
    """

    def __init__(self, config: EncoderConfig, *, seed: int | np.random.Generator = 0) -> None:
        if not isinstance(config, EncoderConfig):
            raise ValueError(f"config: expected an EncoderConfig, got {type(config).__name__}")
        if isinstance(seed, np.random.Generator):
            rng = seed
        else:
            rng = np.random.default_rng(check_int(seed, "seed", low=0))
        self.config = config
        self.dtype = np.dtype(config.dtype)
        self.beta = config.beta
        self.target_rows_encoded = 0
        gain = np.sqrt(2.0) if config.activation in ("relu", "gelu") else 1.0
        self.params: dict[str, np.ndarray] = {}
        for name, shape in param_shapes(config).items():
            if ".W" in name:
                w = rng.standard_normal(shape) * (gain / np.sqrt(shape[0]))
            else:
                w = np.zeros(shape)
            self.params[name] = w.astype(self.dtype)

    # ------------------------------------------------------------------ params
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes of all parameters (see :func:`param_shapes`)."""
        return param_shapes(self.config)

    @property
    def n_params(self) -> int:
        """Total number of scalar parameters."""
        return int(sum(p.size for p in self.params.values()))

    def get_params(self) -> dict[str, np.ndarray]:
        """Return a copy of all parameters as a flat dict ``name -> array``."""
        return {name: p.copy() for name, p in self.params.items()}

    def set_params(self, params: dict[str, Any]) -> None:
        """Overwrite all parameters (in place, cast to the model dtype).

        Parameters
        ----------
        params : dict
            Exactly the names of :func:`param_shapes` with those shapes and
            finite values. Everything is validated before anything is written.
        """
        if not isinstance(params, dict):
            raise ValueError(f"params: expected a dict name -> array, got {type(params).__name__}")
        shapes = self.param_shapes()
        missing = sorted(set(shapes) - set(params))
        extra = sorted(set(params) - set(shapes))
        if missing or extra:
            raise ValueError(f"params: expected exactly the names {sorted(shapes)}; missing {missing}, unexpected {extra}")
        checked = {
            name: as_float_array(params[name], f"params[{name!r}]", shape=shape, dtype=self.dtype)
            for name, shape in shapes.items()
        }
        for name, value in checked.items():
            self.params[name][...] = value

    # ----------------------------------------------------------------- forward
    def _check_inputs(self, x: Any, tower: str) -> np.ndarray:
        in_dim = self.config.widths(tower)[0]
        name = "X" if tower == "query" else "Y"
        return as_float_array(x, name, shape=(None, in_dim), dtype=self.dtype)

    def _forward(self, x: np.ndarray, tower: str) -> tuple[np.ndarray, TowerCache]:
        """Forward pass of one tower on validated input (see the module docstring)."""
        cfg = self.config
        n_layers = len(cfg.hidden) + 1
        cache = TowerCache(tower=tower)
        h = x
        for layer in range(n_layers):
            z = h @ self.params[f"{tower}.W{layer}"] + self.params[f"{tower}.b{layer}"]
            cache.h.append(h)
            cache.z.append(z)
            h = _activate(cfg.activation, z) if layer < n_layers - 1 else z
        if cfg.normalize:
            raw = np.linalg.norm(h, axis=1, keepdims=True)
            cache.small = raw < NORM_EPS
            cache.norm = np.maximum(raw, NORM_EPS).astype(self.dtype, copy=False)
            h = h / cache.norm
        cache.out = h
        return h, cache

    def _backward(self, cache: TowerCache, d_out: Any, tower: str) -> dict[str, np.ndarray]:
        """Backward pass of one tower: gradients of a scalar loss given dL/d(out)."""
        if not isinstance(cache, TowerCache) or cache.tower != tower:
            raise ValueError(f"cache: expected the TowerCache of a forward_{tower}s call, got {cache!r:.80}")
        cfg = self.config
        d_out = as_float_array(d_out, "dF" if tower == "query" else "dG", shape=cache.out.shape, dtype=self.dtype)
        if cfg.normalize:
            # out = u / ||u||:  du = (d_out - out <out, d_out>) / ||u||  (Jacobian (I - out out^T)/||u||);
            # rows with ||u|| < NORM_EPS: out = u / NORM_EPS, so du = d_out / NORM_EPS.
            out = cache.out
            proj = np.where(cache.small, 0, out * np.sum(out * d_out, axis=1, keepdims=True))
            dz = (d_out - proj) / cache.norm
        else:
            dz = d_out
        grads: dict[str, np.ndarray] = {}
        for layer in range(len(cache.z) - 1, -1, -1):
            grads[f"{tower}.W{layer}"] = cache.h[layer].T @ dz
            grads[f"{tower}.b{layer}"] = dz.sum(axis=0)
            if layer > 0:
                dh = dz @ self.params[f"{tower}.W{layer}"].T
                dz = dh * _activation_grad(cfg.activation, cache.z[layer - 1], cache.h[layer])
        return {name: grads[name] for name in sorted(grads, key=list(self.params).index)}

    def forward_queries(self, X: Any) -> tuple[np.ndarray, TowerCache]:
        """Query tower with cache: F = f(X).

        Parameters
        ----------
        X : array_like, shape (B, query_dim)

        Returns
        -------
        F : ndarray, shape (B, out_dim)
        cache : TowerCache
            Pass to :meth:`backward_queries`.
        """
        return self._forward(self._check_inputs(X, "query"), "query")

    def forward_targets(self, Y: Any) -> tuple[np.ndarray, TowerCache]:
        """Target tower with cache: G = g(Y); adds ``len(Y)`` to :attr:`target_rows_encoded`.

        Parameters
        ----------
        Y : array_like, shape (N, target_dim)

        Returns
        -------
        G : ndarray, shape (N, out_dim)
        cache : TowerCache
            Pass to :meth:`backward_targets`.
        """
        y = self._check_inputs(Y, "target")
        out = self._forward(y, "target")
        self.target_rows_encoded += y.shape[0]
        return out

    def backward_queries(self, cache: TowerCache, dF: Any) -> dict[str, np.ndarray]:
        """Gradients of the query-tower parameters given dL/dF, shape (B, out_dim)."""
        return self._backward(cache, dF, "query")

    def backward_targets(self, cache: TowerCache, dG: Any) -> dict[str, np.ndarray]:
        """Gradients of the target-tower parameters given dL/dG, shape (N, out_dim)."""
        return self._backward(cache, dG, "target")

    def encode_queries(self, X: Any) -> np.ndarray:
        """F = f(X), shape (B, out_dim), without keeping a cache. The query vector is q = beta F."""
        return self._forward(self._check_inputs(X, "query"), "query")[0]

    def encode_targets(self, Y: Any, *, count: bool = True) -> np.ndarray:
        """G = g(Y), shape (N, out_dim), without a cache (the index vectors z_y).

        Parameters
        ----------
        Y : array_like, shape (N, target_dim)
        count : bool, default True
            Add ``N`` to :attr:`target_rows_encoded`. Evaluation code that
            should not be charged to training passes ``count=False``.
        """
        y = self._check_inputs(Y, "target")
        G = self._forward(y, "target")[0]
        if count:
            self.target_rows_encoded += y.shape[0]
        return G

    def logits(self, F: Any, G: Any) -> np.ndarray:
        """a = beta F G^T, shape (B, N), from already encoded F (B, d) and G (N, d).

        In the dtype ``np.result_type(F, G)`` (integers count as float64): float32
        when both are float32, whatever the model's dtype.
        """
        d = self.config.out_dim
        F = as_float_array(F, "F", shape=(None, d))
        G = as_float_array(G, "G", shape=(None, d))
        return self.beta * (F @ G.T)

    # ------------------------------------------------------------------ losses
    def _check_batch(self, X: Any, pos: Any, Y_all: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = self._check_inputs(X, "query")
        # Y_all may be large: check its shape here, finiteness only on the rows used.
        y_all = as_float_array(Y_all, "Y_all", shape=(None, self.config.target_dim), finite=False)
        n_targets = y_all.shape[0]
        p = as_index_array(pos, "pos", upper=n_targets)
        if p.shape[0] != x.shape[0]:
            raise ValueError(f"pos: expected one id per query ({x.shape[0]}), got {p.shape[0]}")
        return x, p, y_all

    def full_softmax_loss(self, X: Any, pos: Any, Y_all: Any) -> tuple[float, dict[str, np.ndarray]]:
        """Exact softmax cross-entropy over all N targets and its gradient.

        loss = mean_i [log Z(x_i) - a_{i, pos_i}],  a = beta f(X) g(Y_all)^T
        (proofs/README.md section 1; the gold standard every miner is compared with).
        Encodes all N targets (adds N to :attr:`target_rows_encoded`).

        Parameters
        ----------
        X : array_like, shape (B, query_dim)
            Query features.
        pos : array_like of int, shape (B,)
            Id of each query's positive target, in [0, N).
        Y_all : array_like, shape (N, target_dim)
            Features of every target.

        Returns
        -------
        loss : float
        grads : dict[str, ndarray]
            Gradient of ``loss`` for every parameter (same names and shapes as
            :attr:`params`).
        """
        x, p, y_all = self._check_batch(X, pos, Y_all)
        y = as_float_array(y_all, "Y_all", dtype=self.dtype)
        F, cache_q = self._forward(x, "query")
        G, cache_t = self._forward(y, "target")
        a = self.beta * (F @ G.T)
        loss, d_a = _softmax.full_softmax_loss(a, p)
        self.target_rows_encoded += y.shape[0]  # counted once nothing can fail any more
        # a = beta F G^T  =>  dF = beta dA G,  dG = beta dA^T F
        grads = self.backward_queries(cache_q, self.beta * (d_a @ G))
        grads.update(self.backward_targets(cache_t, self.beta * (d_a.T @ F)))
        return float(loss), grads

    def sampled_softmax_loss(
        self,
        X: Any,
        pos: Any,
        Y_all: Any,
        neg: Any,
        log_q: Any | None = None,
    ) -> tuple[float, dict[str, np.ndarray]]:
        """Sampled softmax cross-entropy over given negatives, and its gradient.

        With ``log_q`` (negatives drawn i.i.d. from a proposal Q, P13, proofs/README.md
        section 6)::

            loss_i = log((1/n) sum_j exp(a_{i, neg_ij} - log_q_ij)) - a_{i, pos_i}

        with log Q held constant in the gradient; without ``log_q`` (top-k /
        in-batch negatives)::

            loss_i = logsumexp([a_{i, pos_i}, a_{i, neg_i1}, ..., a_{i, neg_in}]) - a_{i, pos_i}

        The loss is the batch mean (see :func:`reference.softmax.sampled_softmax_loss`).
        Only the distinct target rows among ``pos`` and ``neg`` are encoded
        (their number is added to :attr:`target_rows_encoded`).

        Parameters
        ----------
        X : array_like, shape (B, query_dim)
        pos : array_like of int, shape (B,)
        Y_all : array_like, shape (N, target_dim)
            Features of every target (only the rows used are read).
        neg : array_like of int, shape (B, n)
            Negative ids for each query, in [0, N); repeats allowed.
        log_q : array_like, shape (B, n), optional
            log Q(neg_ij | x_i) of the proposal that drew the negatives.

        Returns
        -------
        loss : float
        grads : dict[str, ndarray]
            Gradient for every parameter.
        """
        x, p, y_all = self._check_batch(X, pos, Y_all)
        B = x.shape[0]
        ng = as_index_array(neg, "neg", upper=y_all.shape[0], ndim=2)
        if ng.shape[0] != B:
            raise ValueError(f"neg: expected shape ({B}, n) (one row per query), got {ng.shape}")
        lq = None
        if log_q is not None:
            lq = as_float_array(log_q, "log_q", shape=ng.shape)
        # Encode each distinct target once; inv maps (pos, neg) back into the unique rows.
        uniq, inv = np.unique(np.concatenate([p, ng.ravel()]), return_inverse=True)
        y = as_float_array(y_all[uniq], "Y_all (rows used)", dtype=self.dtype)
        F, cache_q = self._forward(x, "query")
        G, cache_t = self._forward(y, "target")
        inv_pos, inv_neg = inv[:B], inv[B:].reshape(ng.shape)
        G_pos, G_neg = G[inv_pos], G[inv_neg]  # (B, d), (B, n, d)
        a_pos = self.beta * np.einsum("bd,bd->b", F, G_pos)
        a_neg = self.beta * np.einsum("bd,bnd->bn", F, G_neg)
        loss, d_pos, d_neg = _softmax.sampled_softmax_loss(a_pos, a_neg, lq)  # validates log_q <= 0
        self.target_rows_encoded += y.shape[0]  # counted once nothing can fail any more
        dF = self.beta * (d_pos[:, None] * G_pos + np.einsum("bn,bnd->bd", d_neg, G_neg))
        # scatter-add the per-(query, target) contributions onto the unique rows
        dG = np.zeros_like(G)
        np.add.at(dG, inv_pos, self.beta * d_pos[:, None] * F)
        np.add.at(dG, inv_neg.ravel(), (self.beta * d_neg[:, :, None] * F[:, None, :]).reshape(-1, F.shape[1]))
        grads = self.backward_queries(cache_q, dF)
        grads.update(self.backward_targets(cache_t, dG))
        return float(loss), grads
