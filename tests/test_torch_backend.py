"""The PyTorch demonstration backend passes the conformance kit, and the kit catches
a realistic porting bug in it (proofs/README.md section 9).

PyTorch is optional (the ``torch`` extra), so these tests are skipped, with
the reason printed, when it is not installed. ``.ci/run`` installs it and sets
``REFERENCE_REQUIRE_TORCH=1``, which turns a missing PyTorch into a failure:
in CI these tests always run. The sampler check runs at the kit's defaults:
false-alarm rate 1e-6 for the run, TV 0.05 detected with probability 0.9 per
query; the seed is fixed, so the outcome is deterministic.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

try:
    import torch
except ImportError:
    if os.environ.get("REFERENCE_REQUIRE_TORCH") == "1":
        raise
    pytest.skip("PyTorch is not installed: it is optional (the demonstration backend); install a CPU build "
                "of torch to run these tests", allow_module_level=True)

from reference.conformance import check_encoder, run_conformance  # noqa: E402
from reference.contrib import torch_backend  # noqa: E402


def test_torch_backend_passes_the_kit():
    report = run_conformance(torch_backend.BACKEND, name="reference.contrib.torch_backend:BACKEND")
    assert report.passed, report.format()
    assert [c.name for c in report.ran] == ["sampler", "encoder", "topk"]


def test_torch_gradients_come_from_autograd_and_match_in_float64():
    """The encoder check's float64 scenarios agree to 1e-9 relative (in practice ~1e-13)."""
    report = check_encoder(torch_backend.encoder)
    f64 = [c for c in report.cases if not c.scenario.startswith("float32")]
    assert f64 and all(c.value <= 1e-9 for c in f64), report.format()


def _as_nn_linear(params, config, X, pos, Y, neg=None, log_q=None):
    """The classic porting bug: copying our (in, out) W into nn.Linear.weight, which is
    (out, in) and applied as x @ weight.T. Rectangular layers would crash on the shape,
    square ones silently compute with W transposed."""
    layers = len(config["hidden"]) + 1
    fixed = dict(params)
    for tower in ("query", "target"):
        for layer in range(layers):
            W = params[f"{tower}.W{layer}"]
            if W.shape[0] == W.shape[1]:
                fixed[f"{tower}.W{layer}"] = W.T
    loss, grads = torch_backend.encoder(fixed, config, X, pos, Y, neg, log_q)
    return loss, {k: (g.T if params[k].ndim == 2 and params[k].shape[0] == params[k].shape[1] else g)
                  for k, g in grads.items()}


def test_kit_catches_the_nn_linear_transpose_bug():
    report = check_encoder(_as_nn_linear)
    assert not report.passed
    failed = {c.scenario for c in report.failures}
    assert "square-gelu" in failed and "tanh-normalized" not in failed  # only square layers show it
    assert "grads[" in report.format()


def test_torch_topk_ties_on_signed_zeros():
    """A zero query gives logits +0.0 and -0.0; both must tie (answer: ids 0..k-1)."""
    points = np.array([[1.0, -1.0], [-1.0, 1.0], [0.0, 2.0], [-3.0, 0.0]])
    ids = torch_backend.topk(points, np.zeros((1, 2)), 3)
    assert ids.tolist() == [[0, 1, 2]]


def test_torch_normalisation_floor_is_the_oracles():
    """Rows whose tower output is shorter than NORM_EPS = 1e-12: the oracle divides by the floor,
    not by the norm, and so must the port (a floor at finfo.tiny instead would normalise these
    rows to unit length: the loss then differs by O(beta))."""
    import dataclasses

    from reference.encoder import DualEncoder, EncoderConfig, param_shapes

    config = EncoderConfig(query_dim=3, target_dim=3, hidden=(), out_dim=3, activation="identity",
                           normalize=True, beta=4.0)
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s) for k, s in param_shapes(config).items()}
    params["target.W0"] *= 1e-14  # target embeddings of norm ~1e-14 < 1e-12
    params["target.b0"] = np.zeros_like(params["target.b0"])
    X, Y = rng.standard_normal((4, 3)), rng.standard_normal((6, 3))
    pos = np.array([0, 2, 4, 5])
    enc = DualEncoder(config)
    enc.set_params(params)
    ref_loss, ref_grads = enc.full_softmax_loss(X, pos, Y)
    loss, grads = torch_backend.encoder(params, dataclasses.asdict(config), X, pos, Y)
    assert abs(loss - ref_loss) <= 1e-9 * max(1.0, abs(ref_loss)), (loss, ref_loss)  # float64 identity
    # Gradients through the floor are scaled by 1 / NORM_EPS = 1e12; target.b0's is analytically 0 (the
    # softmax weights of a row sum to 1) and is rounding noise at that scale, so the absolute tolerance is
    # relative to the largest gradient entry over all tensors (the kit's GRADIENT_FLOOR idea).
    scale = max(float(np.abs(g).max()) for g in ref_grads.values())
    for name, g in ref_grads.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-9, atol=1e-9 * scale, err_msg=name)
