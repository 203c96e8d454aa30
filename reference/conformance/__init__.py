"""Conformance kit: check another implementation against the reference (proofs/README.md section 9).

A *backend* is any Python object (a module, a class instance, a
``types.SimpleNamespace`` or a ``dict``) that provides some of five
callables, one per protocol, and optionally ``dtype`` ("float32" or
"float64", default "float64"): the precision in which it computes logits.
The kit runs one check per callable it finds, compares the backend with the
reference's own oracle on fixed scenarios, and reports, for every scenario,
the statistic, the threshold, pass/fail and the worst case found. From the
shell::

    python -m reference conformance mypackage.mymodule:BACKEND
    python -m reference conformance mypackage.mymodule:my_topk --dtype float32
    python -m reference conformance mypackage.mymodule:BACKEND --targets Z.npy --queries Q.npy --k 100

exits with status 0 when every check passes and 1 otherwise; the first line
printed says what is wrong (the most serious failure). The reference itself
passes: ``python -m reference conformance reference.conformance:REFERENCE_BACKEND``.

Protocols, one module each (read it for the exact rule and the scenarios)
------------------------------------------------------------------------
``sample(points, queries, n, seed) -> ids`` (B, n)
    i.i.d. draws from softmax(<q_b, z>): :mod:`reference.conformance.sampler`.
``encoder(params, config, X, pos, Y, neg=None, log_q=None) -> (loss, grads)``
    full and sampled softmax losses and their gradients:
    :mod:`reference.conformance.encoder`.
``bracket(points, queries, tol) -> (lo, hi)``
    lo <= log Z <= hi, hi - lo <= tol (P2, P7): :mod:`reference.conformance.bracket`.
``topk(points, queries, k) -> ids`` (B, k)
    exact top-k, ties by the smaller id (P8); failures classified as missing
    neighbour, invalid id, unsorted, near-tie swap or tie rule:
    :mod:`reference.conformance.topk`.
``nystrom(G0, landmarks, G_L, kernel) -> Ghat``
    the Nystrom map of proofs/README.md section 5: :mod:`reference.conformance.nystrom`.
``dynamic_build(points) -> state``, then ``state.move / insert / delete / rebuild`` and ``state.topk / sample / bracket``
    an index kept right through a seeded script of updates shaped like training, checked after
    every step; the report names the first wrong step: :mod:`reference.conformance.dynamic`.

Inputs are plain C-contiguous NumPy arrays (float64 unless stated), ints and
dicts of arrays; outputs may be anything ``numpy.asarray`` accepts (NumPy
arrays, CPU tensors, lists). Every array handed to a backend is a fresh copy,
compared with the original after the call: a backend that modifies its inputs
fails. Anything a backend raises, ``SystemExit`` and ``KeyboardInterrupt``
included, is a failure naming the call, and each call has a time limit
(``--time-limit``, default 600 s): :mod:`reference.conformance._calls` says
how, and what no time limit can interrupt.

Precision
---------
Top-k and bracket compare the backend's logits with float64 ones; they
accept the rounding of the declared precision, a bound derived in
proofs/README.md ("The rounding bound of a declared precision") and computed
by :mod:`reference.conformance.precision`. Exact ties are still held to the
smaller-id rule where the logits are exact in that precision whatever the
order of summation (:func:`reference.conformance.precision.exact_logits`).

False alarms
------------
Only the sampler check is random; its false-alarm rate is ``alpha`` for the
whole run: a correct exact sampler fails with probability at most ``alpha``,
up to the chi-square approximation of the G statistic's tail. The test is
:func:`reference.stats.g_test` (re-exported here), the one G-test of the
repository: it keeps that approximation honest by merging bins until every
group expects at least 20 draws and by Williams' correction: simulating 10^6
exact count vectors for each of three scenario queries (moderate, peaked,
duplicates), the rates of p < 1e-3, 1e-4, 1e-5 were within 0.8x-1.3x of
nominal (with the textbook minimum of 5 expected per group they reached 2.1x
at 1e-5, growing into the tail); ``tests/test_conformance.py`` repeats this
(marked slow). Every other check compares deterministic numbers with a
stated rounding tolerance.

What the sampler check catches
------------------------------
:func:`power_against` (one query) and :func:`sampler_failure_probabilities`
(every scenario) turn a known defect, given as the exact distribution the
backend draws from, into the probability that the kit fails it. At the
defaults, random logit errors of standard deviation 0.03 nats pass (the run
fails with probability < 1e-3) and 0.1 nats fail every scenario (> 0.95
each). The huge-logits scenario (logits near 1e4) makes that a relative
precision of ~1e-6 for the logits: float32 logits pass, float16 and bfloat16
logits fail; the arithmetic after the max-shift may be float16. The gallery
of ``tests/wrong_backends.py`` (``GALLERY``) plants such defects, and what
real top-k libraries do, with the verdicts the kit must give; reference/conformance/README.md
lists them and what the defaults miss.

Your own data
-------------
``--targets Z.npy --queries Q.npy [--k K]`` runs the top-k check (all
queries) and the sampler check (the first 16 queries) on your arrays, read and
validated as ``compare`` reads its ``.npy`` input.

Golden vectors
--------------
``python -m reference conformance --golden check`` compares the reference with
the ``.npz`` files of ``reference/golden/`` and ``--golden regenerate``
rewrites them (see :mod:`reference.golden`).
"""

from __future__ import annotations

from reference.conformance._calls import DEFAULT_TIME_LIMIT
from reference.conformance.bracket import BRACKET_RTOL, BracketScenario, bracket_scenarios, check_bracket
from reference.conformance.command import add_arguments, load_user_data, run
from reference.conformance.dynamic import DynamicStep, check_dynamic, dynamic_script
from reference.conformance.dynamic_backends import REBUILD_BACKEND, TREE_BACKEND, from_static
from reference.conformance.encoder import ENCODER_RTOL, GRADIENT_FLOOR, EncoderScenario, check_encoder, encoder_scenarios
from reference.conformance.nystrom import NYSTROM_RTOL, NystromScenario, check_nystrom, nystrom_scenarios
from reference.conformance.precision import logit_error_factor
from reference.conformance.reference_backend import REFERENCE_BACKEND, ReferenceBackend
from reference.conformance.report import SEVERITY, Case, CheckReport, ConformanceReport
from reference.conformance.runner import CHECKS, load_backend, run_conformance
from reference.conformance.sampler import (
    SamplerScenario,
    check_sampler,
    sampler_failure_probabilities,
    sampler_scenarios,
)
from reference.conformance.statistics import (
    DEFAULT_ALPHA,
    DEFAULT_POWER,
    DEFAULT_TV,
    IMPOSSIBLE_PROBABILITY,
    detectable_tv,
    power_against,
    sample_size_for_tv,
)
from reference.conformance.topk import NEAR_TIE, TopkScenario, check_topk, classify_topk, topk_scenarios
from reference.stats import GTestResult, g_test, merge_small_bins

__all__ = [
    "CHECKS",
    "SEVERITY",
    "Case",
    "CheckReport",
    "ConformanceReport",
    "GTestResult",
    "merge_small_bins",
    "g_test",
    "DEFAULT_ALPHA",
    "DEFAULT_TV",
    "DEFAULT_POWER",
    "DEFAULT_TIME_LIMIT",
    "IMPOSSIBLE_PROBABILITY",
    "detectable_tv",
    "sample_size_for_tv",
    "power_against",
    "SamplerScenario",
    "sampler_scenarios",
    "check_sampler",
    "sampler_failure_probabilities",
    "ENCODER_RTOL",
    "GRADIENT_FLOOR",
    "EncoderScenario",
    "encoder_scenarios",
    "check_encoder",
    "BRACKET_RTOL",
    "BracketScenario",
    "bracket_scenarios",
    "check_bracket",
    "NEAR_TIE",
    "TopkScenario",
    "topk_scenarios",
    "check_topk",
    "classify_topk",
    "logit_error_factor",
    "NYSTROM_RTOL",
    "NystromScenario",
    "nystrom_scenarios",
    "check_nystrom",
    "DynamicStep",
    "dynamic_script",
    "check_dynamic",
    "from_static",
    "TREE_BACKEND",
    "REBUILD_BACKEND",
    "run_conformance",
    "load_backend",
    "load_user_data",
    "ReferenceBackend",
    "REFERENCE_BACKEND",
    "add_arguments",
    "run",
]
