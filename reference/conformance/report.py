"""Reports of the conformance kit: one :class:`Case` per scenario, one :class:`CheckReport`
per protocol, one :class:`ConformanceReport` per run.

A failing case carries a *kind*: what is wrong, in one of the classes of
:data:`SEVERITY`. The first line of a formatted run names the most serious
failure found (a backend that crashed before one that misses neighbours,
missing neighbours before a broken tie rule), so that the line a CI log
shows says what is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["SEVERITY", "Case", "CheckReport", "ConformanceReport", "error_case"]

#: Kinds of failure, most serious first (the first line of a report names the most serious one).
SEVERITY: dict[str, int] = {
    "backend error": 100,  # raised, timed out, modified its inputs, unusable output, wrong signature
    "missing neighbour": 90,  # top-k: a true neighbour not returned (beyond the declared precision)
    "wrong result": 85,  # sampler, encoder, bracket, Nystrom: the statistic is over its threshold
    "invalid id": 80,  # top-k: out of range, padding (-1) or repeated
    "unsorted": 70,  # top-k: the right set, not in decreasing logit
    "near-tie swap": 60,  # top-k: two close logits swapped, beyond the declared precision
    "tie rule": 50,  # top-k: exact ties (exact in the declared precision) not ordered by the smaller id
}


@dataclass(frozen=True)
class Case:
    """One scenario of one check: a statistic compared with a threshold.

    Attributes
    ----------
    scenario : str
        Name of the scenario (see the ``*_scenarios`` functions).
    statistic : str
        What was measured, e.g. "smallest G-test p-value over 6 queries".
    value : float
        The measured value (NaN when the backend raised or returned garbage).
    threshold : float
        The threshold it is compared with.
    relation : str
        "<=" or ">=": the case passes iff ``value relation threshold``.
    passed : bool
        Whether the case passed (also False when the backend failed).
    worst : str
        The worst instance found (where the statistic is attained), in words.
    note : str
        Extra context, e.g. the sampler test's power.
    skipped : bool
        The backend declined this scenario (``NotImplementedError``).
    kind : str
        For a failure, its class (a key of :data:`SEVERITY`).
    headline : str
        For a failure, what is wrong in a few words (the report's first line
        when it is the most serious failure of the run).
    """

    scenario: str
    statistic: str
    value: float
    threshold: float
    relation: str
    passed: bool
    worst: str
    note: str = ""
    skipped: bool = False
    kind: str = "wrong result"
    headline: str = ""

    def format(self) -> str:
        """One or more lines for the text report."""
        tag = "SKIP" if self.skipped else ("PASS" if self.passed else "FAIL")
        if self.skipped:
            return f"  {tag}  {self.scenario}: {self.worst}"
        if math.isnan(self.value):  # the backend failed before a statistic could be computed
            lines = [f"  {tag}  {self.scenario}: {self.worst}"]
        else:
            lines = [
                f"  {tag}  {self.scenario}: {self.statistic} = {_fmt(self.value)} "
                f"(pass if {self.relation} {_fmt(self.threshold)})"
            ]
            if self.worst:
                lines.append(f"        {'worst' if self.passed else 'WRONG'}: {self.worst}")
        if self.note:
            lines.append(f"        {self.note}")
        return "\n".join(lines)


def _fmt(x: float) -> str:
    if isinstance(x, (int, np.integer)) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e15):
        return str(int(x))
    return f"{x:.4g}"


def error_case(scenario: str, statistic: str, threshold: float, relation: str, message: str) -> Case:
    """A case the backend failed before a statistic could be computed (kind "backend error")."""
    return Case(scenario, statistic, math.nan, threshold, relation, False, message,
                kind="backend error", headline=message)


@dataclass
class CheckReport:
    """Result of one check (one protocol) over all its scenarios.

    Attributes
    ----------
    name : str
        "sampler", "encoder", "bracket", "topk" or "nystrom".
    description : str
        The rule that was checked, in one line.
    cases : list of Case
    skipped : str or None
        Why the check did not run at all (the backend lacks the callable).
    error : str or None
        Why the check failed without running a scenario (a callable that was
        requested but is missing, or whose signature does not fit the protocol).
    """

    name: str
    description: str
    cases: list[Case] = field(default_factory=list)
    skipped: str | None = None
    error: str | None = None

    @property
    def passed(self) -> bool:
        """True iff the check ran and every case that ran passed."""
        return self.skipped is None and self.error is None and all(c.passed or c.skipped for c in self.cases)

    @property
    def failures(self) -> list[Case]:
        return [c for c in self.cases if not c.passed and not c.skipped]

    @property
    def verdict(self) -> str:
        """One of "PASS", "FAIL" and "SKIP" (the check did not run)."""
        return "SKIP" if self.skipped is not None else ("PASS" if self.passed else "FAIL")

    def most_serious(self) -> tuple[int, str]:
        """(severity, one-line description) of this check's most serious failure; (0, "") if it passed."""
        if self.error is not None:
            return SEVERITY["backend error"], f"{self.name}: {self.error}"
        worst = max(self.failures, key=lambda c: SEVERITY.get(c.kind, 0), default=None)
        if worst is None:
            return 0, ""
        return SEVERITY.get(worst.kind, 0), f"{self.name}, scenario {worst.scenario}: {worst.headline or worst.worst}"

    def format(self) -> str:
        if self.skipped is not None:
            return f"SKIP  {self.name}: {self.skipped}"
        if self.error is not None:
            return f"FAIL  {self.name}: {self.error}"
        tag = "PASS" if self.passed else "FAIL"
        lines = [f"{tag}  {self.name}: {self.description}"]
        lines += [c.format() for c in self.cases]
        return "\n".join(lines)


@dataclass
class ConformanceReport:
    """All checks of one run. ``passed`` is the exit criterion of the CLI."""

    backend: str
    checks: list[CheckReport] = field(default_factory=list)
    alpha: float = math.nan
    dtype: str = "float64"
    protocols: tuple[str, ...] = ()

    @property
    def ran(self) -> list[CheckReport]:
        return [c for c in self.checks if c.skipped is None]

    @property
    def passed(self) -> bool:
        """True iff at least one check ran and every check that ran passed."""
        return bool(self.ran) and all(c.passed for c in self.ran)

    @property
    def verdicts(self) -> dict[str, str]:
        """Check name -> "PASS", "FAIL" or "SKIP", in the order the checks ran."""
        return {c.name: c.verdict for c in self.checks}

    def summary(self) -> str:
        """The first line of the report: the verdict and, for a failure, the most serious one."""
        if not self.ran:
            return f"FAIL: {self.backend} provides none of {', '.join(self.protocols)}"
        failed = [c for c in self.ran if not c.passed]
        if not failed:
            return f"PASS: all {len(self.ran)} checks passed ({', '.join(c.name for c in self.ran)})"
        _, line = max((c.most_serious() for c in failed), key=lambda t: t[0])
        n_fail = sum(max(len(c.failures), c.error is not None) for c in failed)
        more = f" [{n_fail} failing scenario{'s' if n_fail > 1 else ''} in {len(failed)} of {len(self.ran)} checks]"
        return f"FAIL: {line}{more}"

    def format(self) -> str:
        lines = [self.summary(), "", f"Conformance of {self.backend} against the reference (proofs/README.md section 9)"]
        lines.append(f"Declared precision of the backend's logits: {self.dtype}.")
        if any(c.name == "sampler" for c in self.ran):
            lines.append(
                f"False-alarm rate of this run: {self.alpha:g} (the sampler G-tests); "
                "every other check is deterministic."
            )
        lines.append("")
        skipped = [c for c in self.checks if c.skipped is not None]
        for check in self.ran:
            lines.append(check.format())
            lines.append("")
        if skipped:
            lines.append(f"SKIP  {', '.join(c.name for c in skipped)}: "
                         f"{'; '.join(dict.fromkeys(c.skipped for c in skipped))}")
            lines.append("")
        failed = [c.name for c in self.ran if not c.passed]
        if not self.ran:
            lines.append(f"RESULT: FAIL: the backend provides none of {', '.join(self.protocols)}")
        elif failed:
            lines.append(f"RESULT: FAIL: {len(failed)} of {len(self.ran)} checks failed ({', '.join(failed)})")
        else:
            lines.append(f"RESULT: PASS: all {len(self.ran)} checks passed ({', '.join(c.name for c in self.ran)})")
        return "\n".join(lines)
