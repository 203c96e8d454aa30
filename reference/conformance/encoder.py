"""The encoder protocol: ``encoder(params, config, X, pos, Y, neg=None, log_q=None) -> (loss, grads)``.

The dual encoder of :mod:`reference.encoder` (read its module docstring for
the layer equations). ``params`` is a dict ``name -> array`` with the names
and shapes of :func:`reference.encoder.param_shapes` (``"query.W0"`` of shape
(in, out) used as ``h @ W + b``, ``"query.b0"``, ..., ``"target.W0"``, ...);
``config`` is a plain dict with the fields of
:class:`reference.encoder.EncoderConfig` (query_dim, target_dim, hidden,
out_dim, activation, normalize, beta, dtype). X (B, query_dim) are query
features, pos (B,) int64 the positive target of each query, Y
(N, target_dim) the features of every target. Called as
``encoder(params, config, X, pos, Y)`` it must return the full-softmax loss
``mean_i [log sum_y exp(a_iy) - a_i,pos_i]`` with ``a = beta f(X) g(Y)^T``;
called with ``neg=`` (B, n) int64 and ``log_q=`` (B, n) float or None it must
return the sampled-softmax loss of :func:`reference.softmax.sampled_softmax_loss`.
``loss`` is a float, ``grads`` a dict with exactly the names of ``params``,
each of its shape (returning ``{"loss": loss, "grads": grads}`` is accepted
too). Parameters and inputs are float32 when ``config["dtype"] == "float32"``.
A backend without the sampled loss may raise ``NotImplementedError`` for
those calls (reported as skipped). Checked by :func:`check_encoder` against
the NumPy oracle in float64: relative error <= 1e-9 for float64 scenarios,
<= 1e-4 for float32 ones (the scenario's own dtype, not the backend's
declared precision, sets the tolerance).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reference.conformance._calls import DEFAULT_TIME_LIMIT, Declined, call_backend, check_callable, check_time_limit
from reference._validation import as_float_array, as_index_array
from reference.conformance._data import SCENARIO_SEED, scenario_label
from reference.conformance.report import Case, CheckReport, error_case

__all__ = ["ENCODER_RTOL", "GRADIENT_FLOOR", "EncoderScenario", "encoder_scenarios", "check_encoder"]

#: Tolerances of the encoder check, and why.
ENCODER_RTOL = {
    # proofs/README.md section 6: deterministic identities to 1e-9 relative in float64.
    "float64": 1e-9,
    # About 1000 float32 machine epsilons (1.2e-7): forward and backward passes
    # of depth <= 3 with sums over <= 20 terms, compared with a float64 oracle.
    "float32": 1e-4,
}
#: Each gradient tensor's error is measured relative to max(its largest |entry|,
#: GRADIENT_FLOOR * the largest |entry| of all gradients): a gradient that is zero
#: in exact arithmetic (the last target bias without normalisation shifts every
#: logit of a query equally) is then judged on the scale of the others, not on
#: its own rounding noise.
GRADIENT_FLOOR = 1e-2



@dataclass(frozen=True)
class EncoderScenario:
    """A configuration, parameters and a batch; ``neg is None`` means the full softmax."""

    name: str
    config: Any  # reference.encoder.EncoderConfig
    params: dict[str, np.ndarray]
    X: np.ndarray
    pos: np.ndarray
    Y: np.ndarray
    neg: np.ndarray | None
    log_q: np.ndarray | None
    about: str


def encoder_scenarios() -> list[EncoderScenario]:
    """The fixed scenarios of :func:`check_encoder`.

    Every activation appears once; biases are random (a backend that drops a
    bias fails); "square" has square weight matrices (a transposed weight
    still runs, and fails); the sampled scenarios repeat negatives and
    include the positive among them; two scenarios run in float32.
    """
    from reference.encoder import EncoderConfig, param_shapes

    rng = np.random.default_rng(SCENARIO_SEED + 2)

    def make(name: str, about: str, *, B: int = 4, N: int = 9, n_neg: int | None = None,
             with_log_q: bool = True, **cfg: Any) -> EncoderScenario:
        config = EncoderConfig(**cfg)
        dt = np.dtype(config.dtype)
        params = {}
        for pname, shape in param_shapes(config).items():
            scale = 1.0 / np.sqrt(shape[0]) if ".W" in pname else 0.3
            params[pname] = (scale * rng.standard_normal(shape)).astype(dt)
        X = rng.standard_normal((B, config.query_dim)).astype(dt)
        Y = rng.standard_normal((N, config.target_dim)).astype(dt)
        pos = rng.integers(0, N, B).astype(np.int64)
        neg = log_q = None
        if n_neg is not None:
            neg = rng.integers(0, N, (B, n_neg)).astype(np.int64)
            neg[:, 0] = pos  # the positive drawn as a negative (it happens with sampling)
            neg[:, 1] = neg[:, 2]  # a repeated negative
            if with_log_q:
                q_logits = rng.standard_normal((B, N))
                log_Q = q_logits - np.log(np.exp(q_logits).sum(axis=1, keepdims=True))
                log_q = np.take_along_axis(log_Q, neg, axis=1).astype(dt)
        return EncoderScenario(name, config, params, X, pos, Y, neg, log_q, about)

    return [
        make("tanh-normalized", "full softmax, tanh, L2-normalised outputs, beta 5",
             query_dim=6, target_dim=5, hidden=(7,), out_dim=4, activation="tanh", normalize=True, beta=5.0),
        make("square-gelu", "full softmax, gelu (tanh approximation), two square hidden layers, no normalisation",
             query_dim=5, target_dim=5, hidden=(5, 5), out_dim=5, activation="gelu", normalize=False, beta=2.0),
        make("identity-linear", "full softmax, one affine layer per tower, normalised, beta 8",
             query_dim=4, target_dim=3, hidden=(), out_dim=3, activation="identity", normalize=True, beta=8.0),
        make("relu-sampled-logq", "sampled softmax with the logQ correction (P13), relu",
             n_neg=6, query_dim=6, target_dim=5, hidden=(6,), out_dim=4, activation="relu", normalize=True, beta=4.0),
        make("softplus-sampled-no-logq", "sampled softmax without logQ (top-k style), softplus",
             n_neg=5, with_log_q=False, query_dim=5, target_dim=6, hidden=(4,), out_dim=3,
             activation="softplus", normalize=False, beta=1.5),
        make("float32-full", "full softmax in float32, tanh, normalised",
             query_dim=6, target_dim=5, hidden=(7,), out_dim=4, activation="tanh", normalize=True, beta=5.0,
             dtype="float32"),
        make("float32-sampled-logq", "sampled softmax with logQ in float32, gelu",
             n_neg=6, query_dim=5, target_dim=5, hidden=(5,), out_dim=5, activation="gelu", normalize=True,
             beta=4.0, dtype="float32"),
    ]


def _checked_encoder_scenarios(scenarios: Sequence[Any]) -> list[EncoderScenario]:
    """Caller-given encoder scenarios, validated before the backend is called.

    Per scenario: class, name, about (:func:`~reference.conformance._data.scenario_label`);
    config a :class:`reference.encoder.EncoderConfig`; params a dict with exactly the
    names of :func:`reference.encoder.param_shapes`, each a finite array of its shape
    (cast to the config's dtype, as the protocol hands them over); X a finite non-empty
    (B, query_dim) array, Y a finite non-empty (N, target_dim) array, both in the config's
    dtype; pos B integer ids in [0, N); neg None or (B, n) integer ids in [0, N), n >= 1;
    log_q None, or (with neg) a finite (B, n) array of log-probabilities <= 0.
    """
    from reference.encoder import EncoderConfig, param_shapes

    out = []
    for i, sc in enumerate(scenarios):
        label = scenario_label(sc, i, EncoderScenario)
        if not isinstance(sc.config, EncoderConfig):
            raise ValueError(f"{label}.config: expected a reference.encoder.EncoderConfig, "
                             f"got {type(sc.config).__name__}")
        dt = np.dtype(sc.config.dtype)
        shapes = param_shapes(sc.config)
        if not isinstance(sc.params, Mapping):
            raise ValueError(f"{label}.params: expected a dict name -> array, got {type(sc.params).__name__}")
        missing, extra = sorted(set(shapes) - set(sc.params)), sorted(map(str, set(sc.params) - set(shapes)))
        if missing or extra:
            raise ValueError(f"{label}.params: expected exactly the names of param_shapes(config); "
                             f"missing {missing}, unexpected {extra}")
        params = {name: as_float_array(sc.params[name], f"{label}.params[{name!r}]", shape=shape, dtype=dt)
                  for name, shape in shapes.items()}
        X = as_float_array(sc.X, f"{label}.X", shape=(None, sc.config.query_dim), dtype=dt)
        Y = as_float_array(sc.Y, f"{label}.Y", shape=(None, sc.config.target_dim), dtype=dt)
        B, N = X.shape[0], Y.shape[0]
        pos = as_index_array(sc.pos, f"{label}.pos", upper=N)
        if pos.shape != (B,):
            raise ValueError(f"{label}.pos: expected one id per query, shape ({B},), got {pos.shape}")
        neg = log_q = None
        if sc.neg is not None:
            neg = as_index_array(sc.neg, f"{label}.neg", upper=N, ndim=2)
            if neg.shape[0] != B:
                raise ValueError(f"{label}.neg: expected one row per query, shape ({B}, n), got {neg.shape}")
        if sc.log_q is not None:
            if neg is None:
                raise ValueError(f"{label}.log_q: expected None when neg is None (the full softmax), "
                                 f"got {type(sc.log_q).__name__}")
            log_q = as_float_array(sc.log_q, f"{label}.log_q", shape=neg.shape, dtype=dt)
            top = float(log_q.max())
            if top > 0:
                raise ValueError(f"{label}.log_q: expected log-probabilities <= 0, got a maximum of {top!r}")
        out.append(dataclasses.replace(sc, params=params, X=X, pos=pos, Y=Y, neg=neg, log_q=log_q))
    return out


def _encoder_oracle(sc: EncoderScenario) -> tuple[float, dict[str, np.ndarray]]:
    """The NumPy oracle in float64 on the scenario's (possibly float32) parameters."""
    from reference.encoder import DualEncoder

    config64 = dataclasses.replace(sc.config, dtype="float64")
    enc = DualEncoder(config64)
    enc.set_params({k: v.astype(np.float64) for k, v in sc.params.items()})
    X, Y = sc.X.astype(np.float64), sc.Y.astype(np.float64)
    if sc.neg is None:
        return enc.full_softmax_loss(X, sc.pos, Y)
    log_q = None if sc.log_q is None else sc.log_q.astype(np.float64)
    return enc.sampled_softmax_loss(X, sc.pos, Y, sc.neg, log_q)


def _materialize(result: Any) -> Any:
    """The encoder's output as (float loss, dict of float64 arrays), or an error string for a wrong structure.

    Runs inside the guarded call: converting a tensor is backend code too.
    """
    if isinstance(result, Mapping) and "loss" in result and "grads" in result:
        loss, grads = result["loss"], result["grads"]
    elif isinstance(result, (tuple, list)) and len(result) == 2:
        loss, grads = result
    else:
        return f'expected (loss, grads) or {{"loss": ..., "grads": ...}}, got {type(result).__name__}'
    if not isinstance(grads, Mapping):
        return f"grads: expected a dict name -> array, got {type(grads).__name__}"
    return float(np.asarray(loss)), {k: np.asarray(v, dtype=np.float64) for k, v in grads.items()}


def _compare_encoder(
    sc: EncoderScenario, result: Any, ref_loss: float, ref_grads: dict[str, np.ndarray]
) -> tuple[float, str]:
    """Largest relative error over the loss and every gradient tensor, and where it is."""
    if isinstance(result, str):
        return math.nan, result
    loss, grads = result
    if not math.isfinite(loss):
        return math.nan, f"loss: expected a finite value, got {loss}"
    missing = sorted(set(ref_grads) - set(grads))
    extra = sorted(set(grads) - set(ref_grads))
    if missing or extra:
        return math.nan, f"grads: missing {missing}, unexpected {extra} (names as in reference.encoder.param_shapes)"
    errors = {"loss": (abs(loss - ref_loss) / max(1.0, abs(ref_loss)), f"loss {loss!r} vs oracle {ref_loss!r}")}
    scale = max(float(np.abs(g).max()) for g in ref_grads.values())
    for name, ref in ref_grads.items():
        g = grads[name]
        if g.shape != ref.shape:
            return math.nan, f"grads[{name!r}]: expected shape {ref.shape}, got {g.shape}"
        if not np.isfinite(g).all():
            return math.nan, f"grads[{name!r}]: {int((~np.isfinite(g)).sum())} non-finite entries"
        diff = np.abs(g - ref)
        idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
        denom = max(float(np.abs(ref).max()), GRADIENT_FLOOR * scale, 1e-300)
        errors[name] = (
            float(diff[idx]) / denom,
            f"grads[{name!r}] at index {tuple(int(i) for i in idx)}: backend {g[idx]:.6g}, oracle {ref[idx]:.6g} "
            f"(largest |oracle| in the tensor {float(np.abs(ref).max()):.3g})",
        )
    worst = max(errors, key=lambda k: errors[k][0])
    bad = [k for k, (e, _) in errors.items() if e > ENCODER_RTOL[sc.config.dtype]]
    msg = errors[worst][1]
    if bad:
        msg += f"; wrong: {', '.join(bad)}"
    return errors[worst][0], msg


def check_encoder(
    encoder: Callable[..., Any],
    *,
    scenarios: Sequence[EncoderScenario] | None = None,
    time_limit: float | None = DEFAULT_TIME_LIMIT,
) -> CheckReport:
    """Check ``encoder(params, config, X, pos, Y[, neg=, log_q=]) -> (loss, grads)``.

    The oracle is :class:`reference.encoder.DualEncoder` in float64 (its
    backward pass is checked against finite differences in
    ``tests/test_encoder.py``). Per scenario the statistic is the largest
    relative error over the loss (relative to max(1, |loss|)) and every
    gradient tensor (max abs error relative to that tensor's largest entry,
    floored at :data:`GRADIENT_FLOOR` times the largest entry of all
    gradients), with thresholds :data:`ENCODER_RTOL` per dtype.

    Parameters
    ----------
    encoder : callable
        The backend's encoder (see the module docstring).
    scenarios : sequence of EncoderScenario, optional
        Default :func:`encoder_scenarios`. Caller-given ones are validated first
        (every field, in the config's dtype): a malformed one raises ``ValueError``
        naming ``scenarios[i]``, its name and the field, before the backend is called.
    time_limit : float or None, default 600
        Seconds each call of the backend may take (None: no limit).

    Returns
    -------
    CheckReport
    """
    check_callable(encoder, "encoder")
    time_limit = check_time_limit(time_limit)
    scenarios = encoder_scenarios() if scenarios is None else _checked_encoder_scenarios(scenarios)
    report = CheckReport(
        "encoder",
        "loss and gradients of every parameter against the NumPy oracle (float64); "
        f"relative error <= {ENCODER_RTOL['float64']:g} (float64), <= {ENCODER_RTOL['float32']:g} (float32)",
    )
    for sc in scenarios:
        tol = ENCODER_RTOL[sc.config.dtype]
        statistic = "largest relative error (loss, gradients)"
        ref_loss, ref_grads = _encoder_oracle(sc)
        args = [("params", sc.params), ("config", dataclasses.asdict(sc.config)), ("X", sc.X), ("pos", sc.pos),
                ("Y", sc.Y)]
        kwargs = [] if sc.neg is None else [("neg", sc.neg), ("log_q", sc.log_q)]
        try:
            result, err = call_backend(encoder, "encoder", args, kwargs, convert=_materialize, time_limit=time_limit,
                                       may_decline=sc.neg is not None)
        except Declined as exc:
            report.cases.append(
                Case(sc.name, statistic, math.nan, tol, "<=", True,
                     f"skipped: the backend raised NotImplementedError ({exc})", skipped=True)
            )
            continue
        if err is not None:
            report.cases.append(error_case(sc.name, statistic, tol, "<=", err))
            continue
        value, where = _compare_encoder(sc, result, ref_loss, ref_grads)
        if math.isnan(value):
            report.cases.append(error_case(sc.name, statistic, tol, "<=", where))
            continue
        passed = bool(value <= tol)
        report.cases.append(Case(sc.name, statistic, value, tol, "<=", passed, where, sc.about,
                                 headline=f"relative error {value:.3g} > {tol:g}: {where}"))
    return report
