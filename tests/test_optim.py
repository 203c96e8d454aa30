"""Tests of the optimisers: Adam's bias-corrected update, state round trips, validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference.encoder import DualEncoder, EncoderConfig
from reference.optim import SGD, Adam


def _params(rng: np.random.Generator, dtype=np.float64) -> dict[str, np.ndarray]:
    return {"a.W0": rng.standard_normal((3, 2)).astype(dtype), "a.b0": rng.standard_normal(2).astype(dtype)}


@given(
    st.floats(1e-4, 1e-1),
    st.floats(0.0, 0.99),
    st.floats(0.5, 0.9999),
    st.integers(1, 20),
    st.integers(0, 2**31 - 1),
)
def test_adam_constant_gradient_moves_lr_per_step(lr: float, b1: float, b2: float, steps: int, seed: int) -> None:
    """With bias correction, a constant gradient g gives m_hat = g and v_hat = g^2 at EVERY step,
    so each step moves p by exactly lr * g / (|g| + eps). Without (or with a wrong) bias
    correction the first steps are off by factors (1 - beta^t).

    Tolerance 1e-12 relative: a few roundings per step over <= 20 steps.
    """
    rng = np.random.default_rng(seed)
    params = _params(rng)
    start = {k: v.copy() for k, v in params.items()}
    grads = {k: rng.standard_normal(v.shape) + 0.5 for k, v in params.items()}
    opt = Adam(params, lr=lr, betas=(b1, b2), eps=1e-8)
    for _ in range(steps):
        opt.step(grads)
    for k, g in grads.items():
        want = start[k] - steps * lr * g / (np.abs(g) + 1e-8)
        np.testing.assert_allclose(params[k], want, rtol=1e-12, atol=1e-12 * steps, err_msg=k)
    assert opt.t == steps


def test_adam_two_steps_match_the_formula() -> None:
    """Two steps with different gradients, against Algorithm 1 of Kingma & Ba written per scalar."""
    lr, b1, b2, eps = 0.1, 0.8, 0.9, 1e-3
    p = {"w": np.array([1.0, -2.0])}
    opt = Adam(p, lr=lr, betas=(b1, b2), eps=eps)
    g1, g2 = np.array([0.5, -1.0]), np.array([2.0, 0.25])
    opt.step({"w": g1})
    opt.step({"w": g2})
    for i, w0 in enumerate([1.0, -2.0]):
        m = v = 0.0
        w = w0
        for t, g in enumerate([g1[i], g2[i]], start=1):
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            w -= lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)) ** 0.5 + eps)
        assert p["w"][i] == pytest.approx(w, rel=1e-14)


def test_adam_updates_in_place_and_keeps_dtype() -> None:
    rng = np.random.default_rng(0)
    params = _params(rng, np.float32)
    arrays = dict(params)
    opt = Adam(params, lr=0.01)
    opt.step({k: np.ones(v.shape) for k, v in params.items()})  # float64 grads are cast
    for k, v in params.items():
        assert v is arrays[k] and v.dtype == np.float32


def test_adam_minimises_a_quadratic() -> None:
    """f(p) = ||p - c||^2 / 2: Adam reaches c (a sanity check that the sign is right)."""
    c = np.array([3.0, -1.0, 0.5])
    p = {"p": np.zeros(3)}
    opt = Adam(p, lr=0.05)
    for _ in range(2000):
        opt.step({"p": p["p"] - c})
    np.testing.assert_allclose(p["p"], c, atol=1e-3)


def test_adam_trains_the_encoder() -> None:
    """Full-softmax training of a tiny dual encoder lowers the loss substantially."""
    rng = np.random.default_rng(0)
    m = DualEncoder(EncoderConfig(4, 4, hidden=(16,), out_dim=8, beta=5.0), seed=0)
    Y = rng.standard_normal((20, 4))
    pos = rng.integers(0, 20, 64)
    X = Y[pos] + 0.1 * rng.standard_normal((64, 4))  # queries near their target
    opt = Adam(m.params, lr=0.02)
    first, _ = m.full_softmax_loss(X, pos, Y)
    for _ in range(150):
        loss, grads = m.full_softmax_loss(X, pos, Y)
        opt.step(grads)
    assert loss < 0.5 * first, (first, loss)


@pytest.mark.parametrize("cls", [Adam, SGD])
def test_state_dict_round_trip_through_npz(cls, tmp_path) -> None:
    """Save after 3 steps (.npz, allow_pickle=False), load into a fresh optimiser: identical trajectory."""
    rng = np.random.default_rng(1)
    kw = {"lr": 0.01} if cls is Adam else {"lr": 0.01, "momentum": 0.9}
    grads = [{k: rng.standard_normal(v.shape) for k, v in _params(rng).items()} for _ in range(6)]
    pa = _params(np.random.default_rng(2))
    a = cls(pa, **kw)
    for g in grads[:3]:
        a.step(g)
    path = tmp_path / "state.npz"
    np.savez(path, **a.state_dict())
    pb = {k: v.copy() for k, v in pa.items()}
    b = cls(pb, **kw)
    with np.load(path, allow_pickle=False) as f:
        b.load_state_dict(dict(f))
    assert b.t == 3
    for g in grads[3:]:
        a.step(g)
        b.step(g)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])


def test_sgd_step_and_momentum() -> None:
    p = {"w": np.array([1.0, 2.0])}
    opt = SGD(p, lr=0.5, momentum=0.5)
    opt.step({"w": np.array([1.0, -1.0])})
    np.testing.assert_array_equal(p["w"], [0.5, 2.5])
    opt.step({"w": np.array([1.0, -1.0])})  # buf = 0.5 * g + g = 1.5 g
    np.testing.assert_array_equal(p["w"], [0.5 - 0.75, 2.5 + 0.75])


@pytest.mark.parametrize("cls", [Adam, SGD])
@pytest.mark.parametrize(
    "make_grads, match",
    [
        (lambda p: {k: np.zeros(v.shape) for k, v in p.items() if k != "a.b0"}, "missing"),
        (lambda p: {**{k: np.zeros(v.shape) for k, v in p.items()}, "x": np.zeros(1)}, "unexpected"),
        (lambda p: {k: np.zeros((7,)) for k in p}, "grads"),
        (lambda p: {"a.W0": np.zeros((3, 2)), "a.b0": np.array([0.0, np.nan])}, "a.b0"),
        (lambda p: [np.zeros(1)], "grads"),
    ],
)
def test_bad_grads_raise_and_leave_everything_unchanged(cls, make_grads, match: str) -> None:
    """Validation happens before any parameter or state is touched (a NaN in the LAST array included)."""
    p = _params(np.random.default_rng(3))
    opt = cls(p, lr=0.1)
    opt.step({k: np.ones(v.shape) for k, v in p.items()})
    before_p = {k: v.copy() for k, v in p.items()}
    before_s = opt.state_dict()
    with pytest.raises(ValueError, match=match):
        opt.step(make_grads(p))
    for k in p:
        np.testing.assert_array_equal(p[k], before_p[k])
    after_s = opt.state_dict()
    assert after_s["step"] == before_s["step"]
    for k in before_s:
        np.testing.assert_array_equal(after_s[k], before_s[k])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"betas": (-0.1, 0.9)}, "betas"),
        ({"betas": 0.9}, "betas"),
        ({"eps": -1e-8}, "eps"),
    ],
)
def test_bad_adam_arguments_raise(kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Adam(_params(np.random.default_rng(0)), **kwargs)


def test_bad_params_and_sgd_arguments_raise() -> None:
    with pytest.raises(ValueError, match="params"):
        Adam({})
    with pytest.raises(ValueError, match="params"):
        Adam({"w": [1.0, 2.0]})  # a list cannot be updated in place
    with pytest.raises(ValueError, match="momentum"):
        SGD(_params(np.random.default_rng(0)), lr=0.1, momentum=1.0)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda s: s.pop("step"), "missing"),
        (lambda s: s.update(step=-1), "step"),
        (lambda s: s.update(step=1.5), "step"),
        (lambda s: s.update({"m.a.W0": np.zeros((2, 3))}), "m.a.W0"),
        (lambda s: s.update({"v.a.b0": np.array([1.0, -1.0])}), "v >= 0"),
        (lambda s: s.update({"v.a.b0": np.array([1.0, np.inf])}), "v.a.b0"),
        (lambda s: s.update(extra=np.zeros(1)), "unexpected"),
    ],
)
def test_bad_state_raises_and_leaves_state_unchanged(mutate, match: str) -> None:
    p = _params(np.random.default_rng(4))
    opt = Adam(p, lr=0.1)
    opt.step({k: np.ones(v.shape) for k, v in p.items()})
    before = opt.state_dict()
    bad = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in before.items()}
    bad["step"] = 5
    for k, v in bad.items():
        if isinstance(v, np.ndarray):
            v += 1.0
    mutate(bad)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["step"] == before["step"] == 1
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
