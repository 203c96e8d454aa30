"""The PyTorch demonstration backend passes the conformance kit, and the kit catches
a realistic porting bug in it (SPEC section 9).

Skipped only when PyTorch is not installed (``pip install ".[torch]"``; CI
installs it). The sampler check runs at the kit's defaults: false-alarm rate
1e-6 for the run, TV 0.05 detected with probability 0.9 per query; the seed
is fixed, so the outcome is deterministic.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed: pip install '.[torch]' to run these tests")

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
