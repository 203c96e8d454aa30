"""Tests of the dual-encoder oracle (proofs/README.md section 7): hand-written gradients,
dtype agreement, counters and input validation.

Gradient checks use the fourth-order central difference

    f'(p) ~ (-f(p + 2h) + 8 f(p + h) - 8 f(p - h) + f(p - 2h)) / (12 h),  h = 1e-4,

whose truncation error is h^4 f^(5) / 30 ~ 1e-16 * f^(5) and whose rounding
error is ~ 2 * 1e-16 * |loss| / h ~ 1e-11 per entry (loss <= ~20 here). A
parameter array passes when ||fd - grad|| <= RTOL ||grad|| + ATOL with
RTOL = 1e-6 (the relative error required by the task) and ATOL = 1e-9 (about
100 times that rounding error, times sqrt(number of entries), so a gradient
that is zero up to rounding is not judged by a meaningless ratio).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from reference import softmax as sm
from reference.encoder import (
    ACTIVATIONS,
    NORM_EPS,
    DualEncoder,
    EncoderConfig,
    TowerCache,
    param_shapes,
    params_sha256,
)

RTOL = 1e-6
ATOL = 1e-9
H = 1e-4


# --------------------------------------------------------------------------- helpers
@dataclass
class Case:
    model: DualEncoder
    X: np.ndarray
    Y: np.ndarray
    pos: np.ndarray
    neg: np.ndarray
    log_q: np.ndarray | None


@st.composite
def small_cases(draw: st.DrawFn, activations: tuple[str, ...] = ACTIVATIONS) -> Case:
    """A random small model (widths, depth, activation, normalize, beta) and a batch."""
    cfg = EncoderConfig(
        query_dim=draw(st.integers(1, 4)),
        target_dim=draw(st.integers(1, 4)),
        hidden=tuple(draw(st.lists(st.integers(1, 5), min_size=0, max_size=2))),
        out_dim=draw(st.integers(1, 4)),
        activation=draw(st.sampled_from(activations)),
        normalize=draw(st.booleans()),
        beta=draw(st.floats(0.1, 8.0)),
    )
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    model = DualEncoder(cfg, seed=seed)
    # random (not zero) biases, so the check covers a generic point
    model.set_params({k: v + 0.3 * rng.standard_normal(v.shape) for k, v in model.params.items()})
    B, N, n = draw(st.integers(1, 4)), draw(st.integers(2, 6)), draw(st.integers(1, 5))
    X = rng.standard_normal((B, cfg.query_dim))
    Y = rng.standard_normal((N, cfg.target_dim))
    pos = rng.integers(0, N, B)
    neg = rng.integers(0, N, (B, n))  # repeats and the positive itself allowed
    log_q = None
    if draw(st.booleans()):
        log_q = np.log(rng.dirichlet(np.ones(N), B))[np.arange(B)[:, None], neg]
    return Case(model, X, Y, pos, neg, log_q)


def assume_smooth(case: Case) -> None:
    """Reject points where the loss is not smooth within the finite-difference stencil.

    relu has a kink at 0 and x / ||x|| is singular at 0: require every hidden
    pre-activation to be >= 1e-2 away from 0 (the stencil moves them by
    ~2h * |input| ~ 1e-3 at most) and every output norm >= 0.05.
    """
    m = case.model
    for tower, x in (("query", case.X), ("target", case.Y)):
        _, cache = m._forward(x, tower)
        if m.config.activation == "relu":
            for z in cache.z[:-1]:
                assume(np.abs(z).min() > 1e-2)
        if m.config.normalize:
            assume(cache.norm.min() > 0.05)


def finite_difference(loss_fn, model: DualEncoder) -> dict[str, np.ndarray]:
    """Fourth-order central differences of ``loss_fn()`` w.r.t. every parameter entry."""
    fd = {}
    for name, p in model.params.items():
        g = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            orig = p[idx]
            vals = []
            for step in (2 * H, H, -H, -2 * H):
                p[idx] = orig + step
                vals.append(loss_fn())
            p[idx] = orig
            g[idx] = (-vals[0] + 8 * vals[1] - 8 * vals[2] + vals[3]) / (12 * H)
        fd[name] = g
    return fd


def assert_grads_match(grads: dict[str, np.ndarray], fd: dict[str, np.ndarray]) -> None:
    assert list(grads) == list(fd), "gradient names differ from parameter names"
    for name in fd:
        assert grads[name].shape == fd[name].shape, name
        err = np.linalg.norm(fd[name] - grads[name])
        bound = RTOL * np.linalg.norm(grads[name]) + ATOL
        assert err <= bound, f"{name}: |fd - grad| = {err:.3e} > {bound:.3e}\nfd={fd[name]}\ngrad={grads[name]}"


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("activation", ACTIVATIONS)
@given(data=st.data())
def test_full_softmax_gradient_matches_finite_differences(activation: str, data: st.DataObject) -> None:
    """Every parameter's hand-written gradient of the full-softmax loss equals finite differences.

    Parametrised over the activation so that each one is covered by the fixed CI examples.
    """
    case = data.draw(small_cases((activation,)))
    assume_smooth(case)
    m = case.model
    loss, grads = m.full_softmax_loss(case.X, case.pos, case.Y)
    fd = finite_difference(lambda: m.full_softmax_loss(case.X, case.pos, case.Y)[0], m)
    assert_grads_match(grads, fd)
    assert np.isfinite(loss)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@given(data=st.data())
def test_sampled_softmax_gradient_matches_finite_differences(activation: str, data: st.DataObject) -> None:
    """Same for the sampled softmax (with and without log Q; repeated ids and the positive among negatives)."""
    case = data.draw(small_cases((activation,)))
    assume_smooth(case)
    m = case.model
    args = (case.X, case.pos, case.Y, case.neg, case.log_q)
    _, grads = m.sampled_softmax_loss(*args)
    fd = finite_difference(lambda: m.sampled_softmax_loss(*args)[0], m)
    assert_grads_match(grads, fd)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_derivatives_match_finite_differences(activation: str) -> None:
    """act'(z) written out in the encoder equals the central difference of act, elementwise."""
    from reference.encoder import _activate, _activation_grad

    z = np.linspace(-6, 6, 1201)
    z = z[np.abs(z) > 1e-3]  # away from relu's kink
    h = 1e-5
    fd = (_activate(activation, z + h) - _activate(activation, z - h)) / (2 * h)
    # central difference error h^2 |act'''| / 6 <= 1e-10 * 1 plus rounding 1e-16 * 6 / h ~ 1e-10
    np.testing.assert_allclose(_activation_grad(activation, z, _activate(activation, z)), fd, rtol=0, atol=1e-8)


@given(small_cases())
def test_full_softmax_dlogits_rows_sum_to_zero(case: Case) -> None:
    """dloss/da rows sum to 0 (softmax minus one-hot), so an output bias of g has zero gradient.

    Rows sum to (1 - 1)/B up to rounding: each P(y) = exp(a_y - log Z) carries
    the rounding of log Z, eps * (1 + max|a|) relative, and N of them are
    summed: tolerance 4 N eps (1 + max|a|) / B with eps = 2.2e-16.
    Consequence in the model: with normalize=False, adding c to every g(y)
    adds beta <f, c> to every logit of a row and leaves the loss unchanged, so
    the gradient of the target tower's last bias is exactly 0 (up to rounding).
    """
    m = case.model
    F, G = m.encode_queries(case.X), m.encode_targets(case.Y)
    a = m.logits(F, G)
    _, d_a = sm.full_softmax_loss(a, case.pos)
    B, N = a.shape
    tol = 4 * N * np.finfo(np.float64).eps * (1 + np.abs(a).max()) / B
    np.testing.assert_allclose(d_a.sum(axis=1), 0.0, rtol=0, atol=tol)
    if not m.config.normalize:
        _, grads = m.full_softmax_loss(case.X, case.pos, case.Y)
        last = f"target.b{len(m.config.hidden)}"
        scale = np.abs(grads[f"target.W{len(m.config.hidden)}"]).max() + 1.0
        np.testing.assert_allclose(grads[last], 0.0, rtol=0, atol=1e-13 * scale)


@given(small_cases())
def test_sampled_without_log_q_over_all_other_targets_equals_full(case: Case) -> None:
    """With every other target as a negative and no log Q, the sampled loss IS the full loss.

    logsumexp over [a_pos, a_y for y != pos] = log Z: a deterministic identity, so
    loss and every gradient agree to 1e-9 relative (plus 1e-12 absolute for
    gradients that are zero up to rounding).
    """
    m = case.model
    N = case.Y.shape[0]
    others = np.array([[y for y in range(N) if y != p] for p in case.pos])
    full, g_full = m.full_softmax_loss(case.X, case.pos, case.Y)
    samp, g_samp = m.sampled_softmax_loss(case.X, case.pos, case.Y, others)
    np.testing.assert_allclose(samp, full, rtol=1e-9)
    for name in g_full:
        np.testing.assert_allclose(g_samp[name], g_full[name], rtol=1e-9, atol=1e-12, err_msg=name)


@given(small_cases(), st.integers(0, 2**31 - 1))
def test_sampled_with_exact_log_q_equals_full_loss(case: Case, seed: int) -> None:
    """P13 wiring: negatives drawn from P itself with log Q = log P give loss = full loss for every draw."""
    m = case.model
    F, G = m.encode_queries(case.X), m.encode_targets(case.Y)
    a = m.logits(F, G)
    neg = sm.sample_softmax(a, 7, np.random.default_rng(seed))
    log_p = a - sm.log_partition(a)[:, None]
    log_q = np.take_along_axis(log_p, neg, axis=1)
    full, _ = m.full_softmax_loss(case.X, case.pos, case.Y)
    samp, _ = m.sampled_softmax_loss(case.X, case.pos, case.Y, neg, log_q)
    np.testing.assert_allclose(samp, full, rtol=1e-9, atol=1e-12)


def test_backward_is_linear_in_upstream_gradient() -> None:
    """backward_targets(cache, dG) is linear in dG (a check of the raw tower API)."""
    rng = np.random.default_rng(3)
    m = DualEncoder(EncoderConfig(3, 4, hidden=(5,), out_dim=3), seed=1)
    G, cache = m.forward_targets(rng.standard_normal((6, 4)))
    d1, d2 = rng.standard_normal(G.shape), rng.standard_normal(G.shape)
    g1, g2 = m.backward_targets(cache, d1), m.backward_targets(cache, d2)
    g12 = m.backward_targets(cache, 2 * d1 - 3 * d2)
    for name in g1:
        np.testing.assert_allclose(g12[name], 2 * g1[name] - 3 * g2[name], rtol=1e-12, atol=1e-13)


# --------------------------------------------------------------------------- forward
def test_forward_matches_documented_layout() -> None:
    """out = normalize(act(x W0 + b0) W1 + b1): the layout other backends rely on."""
    rng = np.random.default_rng(0)
    for normalize in (True, False):
        m = DualEncoder(EncoderConfig(3, 2, hidden=(4,), out_dim=5, activation="tanh", normalize=normalize), seed=2)
        m.set_params({k: rng.standard_normal(v.shape) for k, v in m.params.items()})
        X = rng.standard_normal((7, 3))
        p = m.params
        u = np.tanh(X @ p["query.W0"] + p["query.b0"]) @ p["query.W1"] + p["query.b1"]
        want = u / np.linalg.norm(u, axis=1, keepdims=True) if normalize else u
        np.testing.assert_allclose(m.encode_queries(X), want, rtol=1e-13)
        F, cache = m.forward_queries(X)
        np.testing.assert_array_equal(F, m.encode_queries(X))
        assert isinstance(cache, TowerCache)


def test_param_shapes_and_deterministic_init() -> None:
    cfg = EncoderConfig(6, 5, hidden=(8, 7), out_dim=4)
    shapes = param_shapes(cfg)
    assert shapes == {
        "query.W0": (6, 8), "query.b0": (8,), "query.W1": (8, 7), "query.b1": (7,),
        "query.W2": (7, 4), "query.b2": (4,),
        "target.W0": (5, 8), "target.b0": (8,), "target.W1": (8, 7), "target.b1": (7,),
        "target.W2": (7, 4), "target.b2": (4,),
    }  # fmt: skip
    a, b, c = DualEncoder(cfg, seed=5), DualEncoder(cfg, seed=5), DualEncoder(cfg, seed=6)
    d = DualEncoder(cfg, seed=np.random.default_rng(5))
    assert {k: v.shape for k, v in a.params.items()} == shapes
    assert a.n_params == sum(int(np.prod(s)) for s in shapes.values())
    for k in shapes:
        np.testing.assert_array_equal(a.params[k], b.params[k])
        np.testing.assert_array_equal(a.params[k], d.params[k])
    assert not np.array_equal(a.params["query.W0"], c.params["query.W0"])


@pytest.mark.parametrize("normalize", [True, False])
def test_normalize_gives_unit_rows_and_logits_bounded_by_beta(normalize: bool) -> None:
    rng = np.random.default_rng(1)
    m = DualEncoder(EncoderConfig(4, 4, hidden=(6,), out_dim=3, normalize=normalize, beta=7.0), seed=0)
    F, G = m.encode_queries(rng.standard_normal((9, 4))), m.encode_targets(rng.standard_normal((11, 4)))
    norms = np.linalg.norm(np.vstack([F, G]), axis=1)
    if normalize:
        np.testing.assert_allclose(norms, 1.0, rtol=1e-14)  # a few ulp of rounding
        assert np.abs(m.logits(F, G)).max() <= 7.0 * (1 + 1e-14)
    else:
        assert np.abs(norms - 1).max() > 1e-3


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_zero_output_rows_are_finite(dtype: str) -> None:
    """u = 0 (zero input, zero biases) is normalised by NORM_EPS: output 0, Jacobian I / NORM_EPS.

    A zero row must give finite loss and gradients; its last-bias gradient is
    exactly dF / NORM_EPS (rounding only: 1e-6 relative covers float32).
    """
    m = DualEncoder(EncoderConfig(3, 2, hidden=(4,), out_dim=3, dtype=dtype), seed=0)
    X = np.zeros((4, 3))
    F, cache = m.forward_queries(X)
    np.testing.assert_array_equal(F, 0.0)
    dF = np.random.default_rng(0).standard_normal(F.shape)
    grads = m.backward_queries(cache, dF)
    np.testing.assert_allclose(grads["query.b1"], dF.sum(axis=0) / NORM_EPS, rtol=1e-6)
    loss, grads = m.full_softmax_loss(X, np.zeros(4, dtype=np.int64), np.random.default_rng(3).standard_normal((10, 2)))
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())


def test_large_temperature_stays_finite() -> None:
    """beta = 1e4 (logits of magnitude 1e4): loss and gradients finite (log-space softmax)."""
    rng = np.random.default_rng(2)
    m = DualEncoder(EncoderConfig(3, 3, hidden=(4,), out_dim=3, beta=1e4), seed=0)
    X, Y = rng.standard_normal((5, 3)), rng.standard_normal((20, 3))
    pos = rng.integers(0, 20, 5)
    loss, grads = m.full_softmax_loss(X, pos, Y)
    assert np.isfinite(loss) and loss >= 0
    assert all(np.isfinite(g).all() for g in grads.values())
    loss_s, grads_s = m.sampled_softmax_loss(X, pos, Y, rng.integers(0, 20, (5, 8)), np.full((5, 8), -np.log(20)))
    assert np.isfinite(loss_s) and all(np.isfinite(g).all() for g in grads_s.values())


@given(small_cases())
def test_float32_agrees_with_float64(case: Case) -> None:
    """A float32 copy of the model gives the float64 outputs, loss and gradients to float32 accuracy.

    Tolerance: float32 unit roundoff is 6e-8; a few layers of width <= 5 and a
    softmax with beta <= 8 amplify it by at most ~100, so outputs and loss must
    agree to 1e-4 relative (2e-5 absolute for entries near 0). Gradients must
    agree to 1e-3 relative plus 1e-3 of the largest gradient entry of the
    whole model (absolute): a gradient entry is a sum of terms whose size is
    set by the model's gradients, not by the entry itself (e.g. the last
    target bias without normalisation is exactly 0 in float64 but a sum of
    cancelling terms of rounding ~1e-5 in float32), plus 1e-5 * beta: near a
    saturated softmax, P - onehot has an absolute float32 error of a few
    unit roundoffs times (1 + max|a|) per logit, which the chain rule
    multiplies by beta and sums over <= 6 targets and widths <= 5.
    """
    assume_smooth(case)
    m64 = case.model
    m32 = DualEncoder(replace(m64.config, dtype="float32"))
    m32.set_params(m64.params)
    for k, v in m32.params.items():
        assert v.dtype == np.float32, k
    F32, F64 = m32.encode_queries(case.X), m64.encode_queries(case.X)
    assert F32.dtype == np.float32
    np.testing.assert_allclose(F32, F64, rtol=1e-4, atol=2e-5)
    l32, g32 = m32.full_softmax_loss(case.X, case.pos, case.Y)
    l64, g64 = m64.full_softmax_loss(case.X, case.pos, case.Y)
    np.testing.assert_allclose(l32, l64, rtol=1e-4, atol=2e-5)
    atol = 1e-3 * max(np.abs(g).max() for g in g64.values()) + 1e-5 * m64.beta
    for name in g64:
        assert g32[name].dtype == np.float32, name
        np.testing.assert_allclose(g32[name], g64[name], rtol=1e-3, atol=atol, err_msg=name)


# --------------------------------------------------------------------------- counters
def test_target_rows_encoded_counts_rows_through_the_target_tower() -> None:
    rng = np.random.default_rng(0)
    m = DualEncoder(EncoderConfig(3, 2, hidden=(4,), out_dim=3), seed=0)
    X, Y = rng.standard_normal((4, 3)), rng.standard_normal((10, 2))
    assert m.target_rows_encoded == 0
    m.full_softmax_loss(X, [0, 1, 2, 3], Y)
    assert m.target_rows_encoded == 10
    m.sampled_softmax_loss(X, [0, 1, 1, 3], Y, [[5, 5], [5, 6], [0, 0], [9, 5]])
    assert m.target_rows_encoded == 10 + 6  # distinct ids {0, 1, 3, 5, 6, 9}
    m.encode_targets(Y[:3])
    assert m.target_rows_encoded == 19
    m.encode_targets(Y, count=False)
    m.encode_queries(X)
    assert m.target_rows_encoded == 19
    m.forward_targets(Y[:2])
    assert m.target_rows_encoded == 21


# --------------------------------------------------------------------------- validation
def _model() -> DualEncoder:
    return DualEncoder(EncoderConfig(3, 2, hidden=(4,), out_dim=3), seed=0)


X_OK = np.zeros((2, 3))
Y_OK = np.ones((5, 2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta": 0.0}, "beta"),
        ({"beta": -1.0}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"activation": "sigmoid"}, "activation"),
        ({"dtype": "float16"}, "dtype"),
        ({"dtype": "int32"}, "dtype"),
        ({"hidden": (4, 0)}, "hidden"),
        ({"hidden": 4}, "hidden"),
        ({"out_dim": 0}, "out_dim"),
        ({"query_dim": 2.5}, "query_dim"),
        ({"normalize": "yes"}, "normalize"),
    ],
)
def test_bad_config_raises(kwargs: dict, match: str) -> None:
    base = {"query_dim": 3, "target_dim": 2}
    with pytest.raises(ValueError, match=match):
        EncoderConfig(**{**base, **kwargs})


def test_config_accepts_numpy_dtype() -> None:
    assert EncoderConfig(3, 2, dtype=np.float32).dtype == "float32"


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: m.encode_queries(np.zeros((2, 4))), "X"),
        (lambda m: m.encode_queries(np.zeros(3)), "X"),
        (lambda m: m.encode_queries(np.zeros((0, 3))), "X"),
        (lambda m: m.encode_queries(np.array([[0, np.nan, 0]])), "X"),
        (lambda m: m.encode_targets(np.array([[0, np.inf]])), "Y"),
        (lambda m: m.encode_queries([["a", "b", "c"]]), "X"),
        (lambda m: m.full_softmax_loss(X_OK, [0, 5], Y_OK), "pos"),
        (lambda m: m.full_softmax_loss(X_OK, [0], Y_OK), "pos"),
        (lambda m: m.full_softmax_loss(X_OK, [0, -1], Y_OK), "pos"),
        (lambda m: m.full_softmax_loss(X_OK, [0, 1], np.ones((5, 3))), "Y_all"),
        (lambda m: m.full_softmax_loss(X_OK, [0, 1], np.full((5, 2), np.nan)), "Y_all"),
        (lambda m: m.sampled_softmax_loss(X_OK, [0, 1], Y_OK, [[1, 2]]), "neg"),
        (lambda m: m.sampled_softmax_loss(X_OK, [0, 1], Y_OK, [1, 2]), "neg"),
        (lambda m: m.sampled_softmax_loss(X_OK, [0, 1], Y_OK, [[1], [7]]), "neg"),
        (lambda m: m.sampled_softmax_loss(X_OK, [0, 1], Y_OK, [[1], [2]], np.zeros((2, 2))), "log_q"),
        (lambda m: m.sampled_softmax_loss(X_OK, [0, 1], Y_OK, [[1], [2]], [[0.5], [-1.0]]), "log_q"),
        (lambda m: m.sampled_softmax_loss(X_OK, [0, 1], Y_OK, [[1], [2]], [[np.nan], [-1.0]]), "log_q"),
        (lambda m: m.sampled_softmax_loss(X_OK, [0, 1], np.where(np.arange(5)[:, None] == 1, np.nan, Y_OK), [[1], [2]]), "Y_all"),
        (lambda m: m.backward_queries(m.forward_targets(Y_OK)[1], np.zeros((5, 3))), "cache"),
        (lambda m: m.backward_queries(m.forward_queries(X_OK)[1], np.zeros((2, 4))), "dF"),
        (lambda m: m.backward_targets(m.forward_targets(Y_OK)[1], np.full((5, 3), np.inf)), "dG"),
        (lambda m: m.logits(np.zeros((2, 3)), np.zeros((4, 2))), "G"),
    ],
)
def test_bad_inputs_raise_value_error(call, match: str) -> None:
    m = _model()
    with pytest.raises(ValueError, match=match):
        call(m)


def test_rejected_loss_call_leaves_counter_and_params_unchanged() -> None:
    """log_q > 0 is rejected inside reference.softmax, after encoding: nothing may change."""
    m = _model()
    before = m.get_params()
    with pytest.raises(ValueError, match="log_q"):
        m.sampled_softmax_loss(X_OK, [0, 1], Y_OK, [[1], [2]], [[0.5], [-1.0]])
    with pytest.raises(ValueError, match="pos"):
        m.full_softmax_loss(X_OK, [0, 9], Y_OK)
    assert m.target_rows_encoded == 0
    for k, v in before.items():
        np.testing.assert_array_equal(m.params[k], v)


def test_bad_model_arguments_raise() -> None:
    with pytest.raises(ValueError, match="config"):
        DualEncoder({"query_dim": 3})
    with pytest.raises(ValueError, match="seed"):
        DualEncoder(EncoderConfig(3, 2), seed=-1)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda p: p.pop("query.W0"), "missing"),
        (lambda p: p.update({"extra": np.zeros(1)}), "unexpected"),
        (lambda p: p.update({"query.W0": np.zeros((4, 3))}), "query.W0"),
        (lambda p: p.update({"target.b1": np.full(3, np.nan)}), "target.b1"),
    ],
)
def test_set_params_rejects_bad_input_and_leaves_model_unchanged(mutate, match: str) -> None:
    m = _model()
    before = m.get_params()
    new = {k: v + 1.0 for k, v in before.items()}
    mutate(new)
    with pytest.raises(ValueError, match=match):
        m.set_params(new)
    for k, v in before.items():
        np.testing.assert_array_equal(m.params[k], v)


def test_set_params_writes_in_place_and_get_params_copies() -> None:
    m = _model()
    arrays = dict(m.params)  # the same array objects
    got = m.get_params()
    got["query.W0"][...] = 0.0
    assert np.abs(m.params["query.W0"]).max() > 0  # get_params returned a copy
    m.set_params({k: np.full(v.shape, 0.5) for k, v in got.items()})
    for k, v in arrays.items():
        assert m.params[k] is v
        np.testing.assert_array_equal(v, 0.5)


def test_params_sha256_changes_exactly_when_the_parameters_do() -> None:
    """Equal for a copy in another key order; different after a 1-ulp change, a dtype
    change with equal values, or a reshape with equal bytes."""
    p = _model().get_params()
    digest = params_sha256(p)
    assert len(digest) == 64 and params_sha256(dict(reversed(list(p.items())))) == digest
    ulp = {**p, "query.b0": np.nextafter(p["query.b0"], np.inf)}
    as32 = {**p, "query.b0": p["query.b0"].astype(np.float32)}  # zeros: equal values
    flat = {**p, "query.W0": p["query.W0"].reshape(-1)}
    assert len({digest, params_sha256(ulp), params_sha256(as32), params_sha256(flat)}) == 4
    with pytest.raises(ValueError, match="mapping"):
        params_sha256([p["query.W0"]])


# --------------------------------------------------------------------------- pinned values
# (the finite-difference checks above only see that forward and backward agree; these
# pin what the forward pass computes, against formulas written out independently here)

def _identity_model(activation: str, width: int) -> DualEncoder:
    """One hidden layer with W0 = W1 = I and zero biases, no normalisation: f(x) = act(x)."""
    m = DualEncoder(EncoderConfig(width, width, hidden=(width,), out_dim=width, activation=activation,
                                  normalize=False), seed=0)
    eye = np.eye(width)
    m.set_params({k: (eye if ".W" in k else np.zeros(v.shape)) for k, v in m.params.items()})
    return m


def test_gelu_values_are_the_tanh_approximation() -> None:
    """gelu(z) = 0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))), value and derivative.

    The reference is computed with ``math`` (scalar, not the encoder's constants),
    plus a few values of that formula written out, plus the exact GELU
    0.5 z (1 + erf(z / sqrt 2)), which the tanh approximation matches to < 5e-4
    (its largest error on the real line is 4.7e-4), while e.g. 0.5 z (c = 0) is off
    by 0.34 at z = 1. Tolerance 1e-14 relative: a few ulp of float64.
    """
    from reference.encoder import _activate, _activation_grad

    c = math.sqrt(2.0 / math.pi)

    def gelu(z: float) -> float:
        return 0.5 * z * (1.0 + math.tanh(c * (z + 0.044715 * z**3)))

    def dgelu(z: float) -> float:
        t = math.tanh(c * (z + 0.044715 * z**3))
        return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * z * z)

    z = np.array([-6.0, -3.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0, 2.0, 3.0, 6.0])
    want = np.array([gelu(float(v)) for v in z])
    np.testing.assert_allclose(want[[2, 8, 9]], [-0.15880800939172324, 0.8411919906082768, 1.954597694087775],
                               rtol=1e-15)
    exact = np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in z])
    assert np.abs(want - exact).max() < 5e-4
    h = _activate("gelu", z)
    np.testing.assert_allclose(h, want, rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(_activation_grad("gelu", z, h), [dgelu(float(v)) for v in z], rtol=1e-14)
    # through the public forward pass: f(x) = gelu(x) for the identity network
    m = _identity_model("gelu", z.size)
    np.testing.assert_allclose(m.encode_queries(z[None, :])[0], want, rtol=1e-14, atol=1e-300)


def test_relu_derivative_is_zero_at_the_kink() -> None:
    """relu'(0) = 0 (the documented convention), element-wise and in the backward pass.

    With W0 = I and zero biases, a zero input entry gives a hidden pre-activation of
    exactly 0: its unit must pass no gradient to W0 / b0.
    """
    from reference.encoder import _activate, _activation_grad

    z = np.array([-1.0, -0.0, 0.0, 1e-300, 2.0])
    np.testing.assert_array_equal(_activation_grad("relu", z, _activate("relu", z)), [0.0, 0.0, 0.0, 1.0, 1.0])
    m = _identity_model("relu", 4)
    X = np.array([[0.0, 1.0, -1.0, 0.0], [2.0, 0.0, 0.5, -3.0]])
    F, cache = m.forward_queries(X)
    np.testing.assert_array_equal(F, np.maximum(X, 0.0))
    dF = np.random.default_rng(0).standard_normal(F.shape)
    grads = m.backward_queries(cache, dF)
    dz0 = dF * (X > 0)  # W1 = I: upstream of the hidden layer is dF, gated by relu'(z) = [z > 0]
    np.testing.assert_array_equal(grads["query.b0"], dz0.sum(axis=0))
    np.testing.assert_array_equal(grads["query.W0"], X.T @ dz0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tiny_nonzero_output_rows_use_the_norm_floor(dtype: str) -> None:
    """0 < ||u|| < NORM_EPS: out = u / NORM_EPS and the Jacobian is I / NORM_EPS (no projection).

    A single affine layer with W = 0 and bias u of norm 0.5 NORM_EPS (so every
    row has output norm 0.5) and a control bias of norm 2 NORM_EPS (normalised
    as usual: unit rows, projected gradient). The gradient is checked against
    the formulas written out (1e-6 relative covers float32 rounding).
    """
    m = DualEncoder(EncoderConfig(3, 2, hidden=(), out_dim=3, dtype=dtype), seed=0)
    X = np.random.default_rng(1).standard_normal((4, 3))
    dF = np.random.default_rng(2).standard_normal((4, 3))
    direction = np.array([0.6, 0.0, -0.8])  # unit
    for scale, small in ((0.5, True), (2.0, False)):
        u = scale * NORM_EPS * direction
        m.set_params({**{k: np.zeros(v.shape) for k, v in m.params.items()}, "query.b0": u})
        F, cache = m.forward_queries(X)
        if small:
            want_F = np.tile(u / NORM_EPS, (4, 1))
            du = dF / NORM_EPS
        else:
            want_F = np.tile(direction, (4, 1))
            du = (dF - want_F * (dF @ direction)[:, None]) / (scale * NORM_EPS)
        np.testing.assert_allclose(F, want_F, rtol=1e-6)
        grads = m.backward_queries(cache, dF)
        np.testing.assert_allclose(grads["query.b0"], du.sum(axis=0), rtol=1e-6)
        np.testing.assert_allclose(grads["query.W0"], X.T @ du, rtol=1e-6, atol=1e-6 * np.abs(X.T @ du).max())


def test_config_defaults_are_the_documented_ones() -> None:
    """EncoderConfig's documented defaults, and beta reaching the logits (a = beta F G^T)."""
    cfg = EncoderConfig(3, 2)
    assert (cfg.hidden, cfg.out_dim, cfg.activation, cfg.normalize, cfg.beta, cfg.dtype) == (
        (64,), 32, "tanh", True, 10.0, "float64")
    m = DualEncoder(cfg, seed=0)
    assert m.beta == 10.0
    F, G = np.array([[1.0] + [0.0] * 31]), np.array([[0.5] + [0.0] * 31])
    np.testing.assert_array_equal(m.logits(F, G), [[5.0]])


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_bad_target_dim_raises(bad) -> None:
    with pytest.raises(ValueError, match="target_dim"):
        EncoderConfig(3, bad)
