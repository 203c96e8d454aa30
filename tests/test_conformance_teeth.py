"""The conformance kit's own tests, with teeth: what each module of reference/conformance/ must say and do.

The kit's other tests (tests/test_conformance*.py) check verdicts and the phrases
that carry them. These pin the rest, by theme, so that a changed constant, a
flipped comparison, a dropped argument or a changed word in any module of the
kit fails a test:

1. Every report, word for word and number for number: the full text the kit
   prints for the reference backend, the dynamic reference backends, the
   independent NumPy port and every backend of tests/wrong_backends.py (each
   planted bug, each gallery entry) is compared with the text stored in
   tests/conformance_reports/. Words must be identical; a number must agree
   to 2e-3 relative (the last printed digit) or 1e-12 absolute, so that the
   last digit of a figure measured at rounding level may differ between NumPy
   and BLAS builds but no constant of the kit can change unseen. After an
   intended change of the kit's output, rewrite the stored texts with
   ``python tests/test_conformance_teeth.py --regenerate`` and read the diff.
2. The scenarios' data, fingerprinted (shape, sum, sum of squares, a
   position-weighted sum), so that a constant of a scenario that a correct
   backend passes either way still cannot change unseen.
3. Module by module, what the reports do not show: guarded calls (_calls), the
   command line (command), the report's ranking (report), the runner's folding.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import re
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from reference import conformance
from reference.conformance import _calls, command, runner
from reference.conformance.report import SEVERITY, Case, CheckReport, ConformanceReport

HERE = Path(__file__).resolve().parent
REPORTS = HERE / "conformance_reports"

# --- 1. every report, word for word -----------------------------------------------------------

_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def _backends() -> dict[str, object]:
    """Every backend whose report is stored: name -> backend."""
    from tests import wrong_backends as wb

    named = {n: getattr(wb, n) for n in dir(wb) if n.startswith(("WRONG_", "GALLERY_", "CORRECT_"))}
    # its error is float32 rounding (4e-7 to 5e-7), its worst gradient an argmax of that noise: the
    # words of its report depend on the BLAS; tests/test_conformance.py checks its verdict and scenario
    del named["WRONG_ENCODER_FLOAT32"]
    named["REFERENCE_BACKEND"] = conformance.REFERENCE_BACKEND
    named["TREE_BACKEND"] = conformance.TREE_BACKEND
    named["REBUILD_BACKEND"] = conformance.REBUILD_BACKEND
    return dict(sorted(named.items()))


def _report_text(name: str, backend: object) -> str:
    return conformance.run_conformance(backend, name=name).format() + "\n"


def _portable(text: str) -> str:
    """The report less what depends on the NumPy/BLAS build rather than on the kit.

    - NumPy's own error messages (raised in its ``.pyx`` code) change wording between versions;
    - the ``worst:`` detail of a passing case whose measured error is at rounding level
      (0 < error < 1e-5: float64 Nystrom maps, float32 gradients) names an argmax of rounding
      noise, which moves between builds, and that error itself is shown as ``<rounding level>``.
    """
    text = re.sub(r"(raised \w+: ).*?( \(at )[\w.]+\.pyx:\d+\)", r"\1<NumPy's message>\2<NumPy>)", text)
    lines, noise = [], False
    for line in text.splitlines():
        if noise and line.lstrip().startswith("worst:"):
            line = line[: line.index("worst:") + 6] + " <rounding-level detail>"
        m = re.match(r"\s+PASS\s.* = (\S+) \(pass if", line)
        noise = bool(m) and 0 < abs(float(m.group(1))) < 1e-5
        if noise:
            line = line[: m.start(1)] + "<rounding level>" + line[m.end(1):]
        lines.append(line)
    return "\n".join(lines)


def _agree(got: str, want: str) -> str | None:
    """None when the texts agree (words exactly, numbers to 2e-3 relative or 1e-12 absolute), else why not.

    Integers of the text are ids and counts: two agree when equal or, for large draw counts, within
    2e-3 relative (one draw of 2568 may move between builds; an id below 500 may not)."""
    got, want = _portable(got), _portable(want)
    g_words, w_words = _NUMBER.split(got), _NUMBER.split(want)
    if g_words != w_words:
        for i, (a, b) in enumerate(zip(g_words, w_words)):
            if a != b:
                return f"words differ: got {a!r}, stored {b!r} (after {''.join(g_words[max(0, i - 3):i])!r})"
        return f"{len(g_words)} word runs, stored {len(w_words)}"
    for a, b in zip(_NUMBER.findall(got), _NUMBER.findall(want)):
        if a == b:
            continue
        x, y = float(a), float(b)
        if not (abs(x - y) <= 1e-12 or abs(x - y) <= 2e-3 * max(abs(x), abs(y))):
            return f"number differs: got {a}, stored {b}"
    return None


@pytest.mark.parametrize("name", list(_backends()))
def test_the_report_of_every_backend_is_the_stored_one(name):
    """Break tried: SEVERITY['tie rule'] 10 -> 11 passes this (not printed); a description's word, a
    threshold, `:.3g` -> `:.4g` in the bracket message, and `hi - lo` -> `hi + lo` each fail it."""
    stored = (REPORTS / f"{name}.txt").read_text()
    got = _report_text(name, _backends()[name])
    why = _agree(got, stored)
    assert why is None, f"{name}: {why}\n--- got:\n{got}"


def test_the_comparison_of_report_texts_has_teeth():
    """The comparison itself: a word, an integer or a float beyond the last digit differs; rounding does not."""
    base = "query 5: lo = 9.11395443339, hi = 9.147 (pass if <= 1e-09); ids 48, 54"
    assert _agree(base, base) is None
    assert _agree(base.replace("9.147", "9.14701"), base) is None
    assert _agree(base.replace("1e-09", "1.0000001e-09"), base) is None
    for changed in (base.replace("lo", "LO"), base.replace("48", "49"), base.replace("9.147", "9.2"),
                    base.replace("1e-09", "2e-09"), base.replace("1e-09", "-1e-09"), base + "x", base[:-1]):
        assert _agree(changed, base) is not None, changed


# --- 2. the scenarios' data, fingerprinted ----------------------------------------------------


def _fingerprint(x: object) -> object:
    """A float summary of an array (shape, sum, sum of squares, weighted sum), recursively of containers."""
    if isinstance(x, np.ndarray):
        a = np.asarray(x, dtype=np.float64).ravel()
        w = np.arange(1, a.size + 1, dtype=np.float64) / max(a.size, 1)
        return ("array", tuple(x.shape), str(x.dtype), float(a.sum()), float((a * a).sum()), float((w * a).sum()))
    if isinstance(x, dict):
        return {str(k): _fingerprint(v) for k, v in sorted(x.items())}
    if isinstance(x, (list, tuple)):
        return [_fingerprint(v) for v in x]
    if hasattr(x, "__dataclass_fields__"):
        return {f: _fingerprint(getattr(x, f)) for f in x.__dataclass_fields__}
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    return x


def _scenario_lists() -> dict[str, object]:
    return {
        "topk": conformance.topk_scenarios(),
        "sampler": conformance.sampler_scenarios(),
        "bracket": conformance.bracket_scenarios(),
        "encoder": conformance.encoder_scenarios(),
        "nystrom": conformance.nystrom_scenarios(),
        "dynamic": conformance.dynamic_script(),
    }


def _close(got: object, want: object, path: str = "") -> str | None:
    if isinstance(want, float) and isinstance(got, (int, float)):
        if got == want or abs(got - want) <= 1e-9 * max(1.0, abs(want)):
            return None
        return f"{path}: {got!r} != {want!r}"
    if isinstance(want, list) and isinstance(got, (list, tuple)):
        if len(got) != len(want):
            return f"{path}: length {len(got)} != {len(want)}"
        for i, (a, b) in enumerate(zip(got, want)):
            why = _close(a, b, f"{path}[{i}]")
            if why:
                return why
        return None
    if isinstance(want, dict) and isinstance(got, dict):
        if sorted(got) != sorted(want):
            return f"{path}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            why = _close(got[k], want[k], f"{path}.{k}")
            if why:
                return why
        return None
    return None if got == want else f"{path}: {got!r} != {want!r}"


def _jsonable(x: object) -> object:
    if isinstance(x, tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, list):
        return [_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    return x


@pytest.mark.parametrize("which", ["topk", "sampler", "bracket", "encoder", "nystrom", "dynamic"])
def test_the_scenario_data_are_the_stored_ones(which):
    """Every array and number of every scenario, to 1e-9 relative (the data are seeded).

    Break tried: `0.01 * rng.standard_normal` -> `0.01 / rng.standard_normal` in the one-sided
    bracket scenario, and the polynomial kernel's c 1.0 -> 2.0: each fails here."""
    import json

    stored = json.loads((REPORTS / "scenarios.json").read_text())[which]
    got = _jsonable(_fingerprint(_scenario_lists()[which]))
    why = _close(json.loads(json.dumps(got)), stored, which)
    assert why is None, why


def _regenerate() -> None:
    import json

    REPORTS.mkdir(exist_ok=True)
    for name, backend in _backends().items():
        (REPORTS / f"{name}.txt").write_text(_report_text(name, backend))
    data = {k: _jsonable(_fingerprint(v)) for k, v in _scenario_lists().items()}
    (REPORTS / "scenarios.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(_backends())} reports and scenarios.json to {REPORTS}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--regenerate"]:
        _regenerate()
    else:
        print(f"usage: python {sys.argv[0]} --regenerate   (rewrite the stored reports in {REPORTS})")
