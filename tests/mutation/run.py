#!/usr/bin/env python
"""Mutation testing of the core modules: a seeded random sample of mutmut's mutants.

Usage (from the repository root, after ``python -m pip install -e ".[test,mutation]"``)::

    python tests/mutation/run.py                 # 40 mutants per core module, one fresh seed
    python tests/mutation/run.py --seeds 3       # three fresh seeds, pooled
    python tests/mutation/run.py --seed 4242     # a given seed (repeat it: --seed 1 2 3)
    python tests/mutation/run.py --per-module 5  # a quick look
    python tests/mutation/run.py --modules softmax plain --per-module 100
    python tests/mutation/run.py --recheck       # re-run the survivors.md entries `not yet killed`
    python tests/mutation/run.py --recheck --names NAME1 NAME2   # re-run these mutants only

Seeds: unless ``--seed`` is given, the runner draws fresh seeds from the operating system
(``--seeds N`` of them, default 1), prints them before anything runs and records them in the
report, so the score is measured on samples the tests were not written against and any run
can be repeated with ``--seed``. Several seeds are pooled: each draws its own sample per
module, the union of the samples runs once, and the report gives the score of the pool (a
mutant drawn by two seeds counts once) and of each seed's sample, each with an exact 95 %
binomial (Clopper-Pearson) interval.

What it does
------------
1. Copies the working tree (``reference/``, ``figures/``, ``tests/``, ``proofs/``,
   ``conftest.py``, ``pyproject.toml``, ``README.md``) to a temporary directory. mutmut writes
   its ``mutants/`` tree there, never into the repository, and the run measures the tests as
   they were when it started.
2. Enumerates every mutant mutmut 3 generates for each core module (with mutmut's own
   generator, in mutmut's order and naming; after the run the names are checked against the
   ones mutmut recorded), drops those that lie inside a ``raise`` statement or a bare string
   statement (a docstring), and draws ``--per-module`` of the rest per module and seed with
   ``random.Random(f"{seed}:{module}")``.
3. Runs ``mutmut run`` on that sample, with the ``[tool.mutmut]`` settings of
   ``pyproject.toml``: mutmut first runs the selected tests once to learn which tests call
   which function; then each mutant runs, in a process forked from that one, exactly the
   default-profile tests that call the mutated function, fastest first, stopping at the
   first failure. ``tests/mutation/pytest_guard.py`` keeps a failed test's ``tracemalloc``
   from slowing every later mutant twentyfold.
4. Writes ``tests/mutation/report.md``: the seeds, per module killed / timeout / survived /
   no tests, the score, and the diff of every survivor. Survivors that
   ``tests/mutation/survivors.md`` lists as ``equivalent`` (with the same diff) are left out
   of the score over non-equivalent mutants, the number the project's target (95 %) is
   about; that score comes with its exact 95 % binomial interval, per module and pooled
   (``scipy.stats.binomtest(k, n).proportion_ci()``). The interval treats the sampled mutants
   as independent draws from the module's mutants; the draws are without replacement from a
   finite set, for which this interval is conservative.

Rechecks (``--recheck``): instead of a sample, the runner runs exactly the mutants of the
``tests/mutation/survivors.md`` entries whose verdict is ``not yet killed`` (or, with
``--names``, the entries or mutmut names given), with the same work copy, per-function tests,
test exclusions and timeouts. Each entry is found among the mutants mutmut generates now by
the same name-or-diff matching that gives a sampled survivor its verdict (``lookup``): by its
name when that mutant still has the entry's diff, or else by its function and diff (the
mutant was renumbered; the table names the mutant that ran). An entry that matches no mutant
is ``stale`` and does not run. A given name that has no entry runs if mutmut has a mutant of
that name. The report (``--report``) is one table: entry, module, result (killed, timeout,
survived, crashed, no tests or stale), the first test that failed (recorded by this file's
``pytest_runtest_logreport`` hook, which the run loads into the mutants' pytest sessions:
mutmut 3 does not record it) and how the entry was matched. A recheck is not a sample: it
prints no score.

The modules: the core modules (``CORE_MODULES``) and the conformance kit, ``reference/
conformance.py`` or, when it is a package, every ``reference/conformance/*.py``, whichever
exists in the tree. The runner writes the chosen modules into the ``[tool.mutmut]
only_mutate`` list of its copy of ``pyproject.toml``, so mutmut generates their mutants.

The work directory is deleted afterwards unless ``--workdir``/``--keep`` is given or mutmut
fails; ``--rerender DIR`` rewrites the report from a kept one (after editing survivors.md)
without running anything. Exit status: 0 if the run completed (whatever the score), 1 if
mutmut failed, 2 on bad arguments. It is not part of the default test run or of CI.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import platform
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

#: The core modules (reference/<name>.py) of the issue "An oracle with teeth".
CORE_MODULES = ("softmax", "bounds", "sampling", "tree", "nystrom", "dynamic", "encoder", "_fastpath", "plain")
#: The seed the tests of the issue "An oracle with teeth" were written against (the README's
#: earlier score): not a default any more, give it with --seed to repeat that sample.
TUNING_SEED = 20230425
DEFAULT_PER_MODULE = 40
TARGET = 0.95        # of the non-equivalent mutants, killed (issue "An oracle with teeth")
MODULE_TARGET = 0.90  # the same, in every module
CONFIDENCE = 0.95    # of the binomial intervals in the report


def conformance_modules(root: Path = REPO) -> list[str]:
    """The conformance kit's modules under ``root``: ``conformance`` or ``conformance/<name>`` (a package)."""
    package = root / "reference" / "conformance"
    if package.is_dir():
        return [f"conformance/{f.stem}" for f in sorted(package.glob("*.py"))]
    return ["conformance"] if (root / "reference" / "conformance.py").exists() else []


def all_modules(root: Path = REPO) -> list[str]:
    """The modules the runner mutates by default: the core modules and the conformance kit."""
    return [*CORE_MODULES, *conformance_modules(root)]


def fresh_seed() -> int:
    """A seed nobody chose: 32 bits from the operating system's random source."""
    return secrets.randbits(32)


def interval(k: int, n: int) -> tuple[float, float] | None:
    """Exact (Clopper-Pearson) ``CONFIDENCE`` interval of a binomial proportion ``k / n``; None if n = 0."""
    if n <= 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=CONFIDENCE, method="exact")
    return float(ci.low), float(ci.high)


def pct_ci(k: int, n: int) -> str:
    """``"95.0% [90.1%, 98.3%]"``: the proportion and its interval."""
    ci = interval(k, n)
    return "n/a" if ci is None else f"{100 * k / n:.1f}% [{100 * ci[0]:.1f}%, {100 * ci[1]:.1f}%]"

#: What the runner copies into its working directory (mutmut copies it again into mutants/).
COPIED = ("reference", "figures", "tests", "proofs", "conftest.py", "pyproject.toml", "README.md")
IGNORED_IN_COPY = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache", "mutants", "out")

#: mutmut's exit codes, grouped the way the report counts them. A mutant is detected when
#: the tests fail (1, 3), run out of time (SIGXCPU) or die (killed by a signal, e.g. the
#: hard CPU limit's SIGKILL).
KILLED_CODES = {1, 3}
TIMEOUT_CODES = {36, -24, 24, 152, 255, -9}
SURVIVED_CODES = {0}
NO_TESTS_CODES = {33, 5}


@dataclass
class Mutant:
    name: str          # mutmut's name, e.g. reference.softmax.x_log_partition__mutmut_3
    module: str        # softmax
    path: str          # reference/softmax.py
    function: str      # log_partition or Class.method
    line: int          # first line of the mutated node in the original file
    excluded: str | None  # "raise" / "docstring" / None
    original: object = field(repr=False, default=None)   # libcst nodes, for the diff
    mutated: object = field(repr=False, default=None)
    tree: object = field(repr=False, default=None)

    def diff(self) -> str:
        """Unified diff (3 lines of context) of the file with this one mutation applied."""
        from mutmut.mutation.file_mutation import deep_replace

        before = self.tree.code
        after = deep_replace(self.tree, self.original, self.mutated).code
        lines = difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                     f"a/{self.path}", f"b/{self.path}", n=3)
        return "".join(lines)


def changed_lines(diff: str) -> list[str]:
    """The removed and added lines of a diff, stripped: what identifies a mutation."""
    return [line[0] + line[1:].strip() for line in diff.splitlines()
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


# --------------------------------------------------------------------------- enumeration

def enumerate_mutants(root: Path, module: str) -> list[Mutant]:
    """Every mutant mutmut generates for reference/<module>.py, in mutmut's order and naming.

    ``root`` must hold the pyproject.toml whose [tool.mutmut] section applies (the current
    directory is switched to it, as mutmut reads its configuration from there). After the
    run, ``check_names`` compares the names with those mutmut recorded.
    """
    import libcst as cst
    from libcst.metadata import MetadataWrapper, ParentNodeProvider, PositionProvider
    from mutmut.mutation.file_mutation import MutationVisitor, group_by_top_level_node
    from mutmut.mutation.mutators import mutation_operators
    from mutmut.mutation.pragma_handling import get_ignored_lines
    from mutmut.mutation.trampoline_templates import mangle_function_name
    from mutmut.utils.format_utils import get_mutant_name

    rel = f"reference/{module}.py"
    old_cwd = os.getcwd()
    os.chdir(root)
    try:
        code = Path(rel).read_text()
        wrapper = MetadataWrapper(cst.parse_module(code))
        visitor = MutationVisitor(mutation_operators, get_ignored_lines(rel, code, wrapper, None), None)
        wrapper.visit(visitor)
        positions = wrapper.resolve(PositionProvider)
        parents = wrapper.resolve(ParentNodeProvider)
    finally:
        os.chdir(old_cwd)

    tree = wrapper.module
    groups = group_by_top_level_node(visitor.mutations)

    def excluded(node) -> str | None:
        while node is not None:
            if isinstance(node, cst.Raise):
                return "raise"
            if isinstance(node, cst.Expr) and isinstance(node.value, (cst.SimpleString, cst.ConcatenatedString,
                                                                        cst.FormattedString)):
                return "docstring"
            node = parents.get(node)
        return None

    # The same walk as mutmut.mutation.file_mutation.combine_mutations_to_source.
    functions = []
    for stmt in tree.body:
        if isinstance(stmt, cst.FunctionDef):
            functions.append((stmt, None))
        elif isinstance(stmt, cst.ClassDef) and isinstance(stmt.body, cst.IndentedBlock):
            functions.extend((m, stmt.name.value) for m in stmt.body.body if isinstance(m, cst.FunctionDef))
    mutants = []
    for func, cls in functions:
        mangled = mangle_function_name(name=func.name.value, class_name=cls) + "__mutmut"
        for i, mutation in enumerate(groups.get(func, ())):
            short = f"{mangled}_{i + 1}"
            mutants.append(Mutant(
                name=get_mutant_name(Path(rel), short), module=module, path=rel,
                function=f"{cls}.{func.name.value}" if cls else func.name.value,
                line=positions[mutation.original_node].start.line, excluded=excluded(mutation.original_node),
                original=mutation.original_node, mutated=mutation.mutated_node, tree=tree))
    return mutants


def check_names(mutants: list[Mutant], recorded: list[str]) -> None:
    """The names computed here must be mutmut's, in mutmut's order (then each denotes the same mutation)."""
    mine = [m.name for m in mutants]
    if mine != recorded:
        first = next((i for i, (a, b) in enumerate(zip(mine, recorded)) if a != b), min(len(mine), len(recorded)))
        raise RuntimeError(f"{mutants[0].path if mutants else '?'}: the mutant names computed here differ from "
                           f"mutmut's ({len(mine)} vs {len(recorded)}, first difference at #{first}); is mutmut "
                           f"the version pinned in pyproject.toml?")


def draw_sample(mutants: list[Mutant], module: str, n: int, seed: int) -> list[Mutant]:
    """``n`` of the eligible mutants (not in a raise statement or docstring), drawn with the seed."""
    eligible = [m for m in mutants if m.excluded is None]
    rng = random.Random(f"{seed}:{module}")
    chosen = rng.sample(range(len(eligible)), min(n, len(eligible)))
    return [eligible[i] for i in sorted(chosen)]


def pooled_sample(mutants: list[Mutant], module: str, n: int, seeds: list[int]) -> tuple[list[Mutant], dict[int, list[str]]]:
    """The union of the samples of every seed (in mutmut's order), and each seed's sample by name."""
    by_seed = {seed: [m.name for m in draw_sample(mutants, module, n, seed)] for seed in seeds}
    drawn = {name for names in by_seed.values() for name in names}
    return [m for m in mutants if m.name in drawn], by_seed


# --------------------------------------------------------------------------- survivors.md

@dataclass
class Verdict:
    verdict: str       # "equivalent", "not yet killed", ...
    reason: str
    changed: list[str]


def lookup(verdicts: dict[str, Verdict], m: Mutant, diff: str) -> tuple[Verdict | None, bool]:
    """The survivors.md entry of ``m``: ``(verdict, stale)``.

    An entry applies when its diff has the same removed and added lines as the mutant's. It is
    found by name, or else by function and diff (mutmut numbers the mutants of a function in
    order, so an edit elsewhere in the function renames them). ``stale``: an entry has the
    mutant's name but another diff.
    """
    changed = changed_lines(diff)
    v = verdicts.get(m.name)
    if v is not None and v.changed == changed:
        return v, False
    prefix = m.name.partition("__mutmut_")[0] + "__mutmut_"
    for name, w in verdicts.items():
        if name.startswith(prefix) and w.changed == changed:
            return w, False
    return None, v is not None


def read_survivors(path: Path) -> dict[str, Verdict]:
    """Parse survivors.md: ``### <mutant name>``, ``- verdict: ...``, ``- reason: ...``, a diff block."""
    if not path.exists():
        return {}
    out: dict[str, Verdict] = {}
    for block in re.split(r"^### ", path.read_text(), flags=re.M)[1:]:
        name = block.splitlines()[0].strip().strip("`")
        verdict = re.search(r"^- verdict:\s*(.+)$", block, flags=re.M)
        reason = re.search(r"^- reason:\s*(.+)$", block, flags=re.M)
        diff = re.search(r"```diff\n(.*?)```", block, flags=re.S)
        if verdict and diff:
            out[name] = Verdict(verdict.group(1).strip().lower(), reason.group(1).strip() if reason else "",
                                changed_lines(diff.group(1)))
    return out


# --------------------------------------------------------------------------- rechecks

#: The verdict of the survivors.md entries ``--recheck`` runs when no ``--names`` are given.
NOT_YET_KILLED = "not yet killed"
#: The environment variable naming the file that ``pytest_runtest_logreport`` appends to; the
#: runner sets it for a recheck's mutmut process only.
KILLS_ENV = "MUTATION_RUNNER_KILLS"
#: This file, as the pytest plugin a recheck adds to its work copy's ``pytest_add_cli_args``.
KILL_RECORDER = "tests.mutation.run"


def module_of(name: str) -> str:
    """The module (as ``--modules`` names it) of a mutmut name.

    ``reference.softmax.x_topk_ids__mutmut_3`` gives ``softmax``, and
    ``reference.conformance.kit.xǁKitǁrun__mutmut_1`` gives ``conformance/kit``. Raises
    ValueError for anything else.
    """
    parts = name.split(".")
    if len(parts) < 3 or parts[0] != "reference" or not all(parts) or "__mutmut_" not in parts[-1]:
        raise ValueError(f"name: expected a mutmut name such as reference.softmax.x_topk_ids__mutmut_3, "
                         f"got {name!r}")
    return "/".join(parts[1:-1])


def select_entries(verdicts: dict[str, Verdict], names: list[str] | None = None) -> list[str]:
    """What a recheck runs: ``names`` if given (repeats dropped, in the given order), else the
    survivors.md entries whose verdict is ``not yet killed``, in the file's order."""
    if names is not None:
        return list(dict.fromkeys(names))
    return [name for name, v in verdicts.items() if v.verdict.startswith(NOT_YET_KILLED)]


@dataclass
class Recheck:
    entry: str              # the survivors.md entry's name, or a name given with --names
    module: str | None      # its module; None if the name is not a mutmut name
    mutant: Mutant | None   # the mutant that runs; None: stale
    match: str              # how the mutant was found, or why the entry is stale


def resolve(entry: str, verdict: Verdict | None, mutants_by_module: dict[str, list[Mutant]],
            diff: Callable[[Mutant], str] = Mutant.diff) -> Recheck:
    """The mutant that a survivors.md entry (or a bare mutmut name) denotes in the present code.

    An entry (``verdict`` given) is matched by ``lookup``, the matching that gives a sampled
    survivor its verdict, applied to this entry alone and the mutants of the entry's function:
    the mutant of the entry's name if it has the entry's diff, else the first mutant of the
    function (in mutmut's order) with that diff. No match: stale. A name without an entry
    (``verdict`` None) has no diff to compare, so it denotes the mutant of that name, if any.
    ``mutants_by_module``: every mutant of each module the runner mutates, from
    ``enumerate_mutants``; ``diff(mutant)`` gives a mutant's diff (``Mutant.diff``).
    """
    try:
        module = module_of(entry)
    except ValueError:
        return Recheck(entry, None, None, "stale: not a mutmut name")
    if module not in mutants_by_module:
        return Recheck(entry, module, None, "stale: not a module the runner mutates")
    mutants = mutants_by_module[module]
    named = next((m for m in mutants if m.name == entry), None)
    if verdict is None:
        return (Recheck(entry, module, named, "by name (no survivors.md entry)") if named is not None
                else Recheck(entry, module, None, "stale: no mutant of this name"))
    prefix = entry.partition("__mutmut_")[0] + "__mutmut_"
    candidates = ([named] if named is not None else []) + [m for m in mutants
                                                           if m.name.startswith(prefix) and m is not named]
    for m in candidates:
        found, _ = lookup({entry: verdict}, m, diff(m))
        if found is not None:
            return Recheck(entry, module, m, "by name" if m is named else f"by function and diff: now `{m.name}`")
    return Recheck(entry, module, None, "stale: the mutant of this name has another diff, and no other mutant of "
                                        "its function has the entry's" if named is not None else
                                        "stale: no mutant of this name, and no mutant of its function has the "
                                        "entry's diff")


def pytest_runtest_logreport(report) -> None:
    """pytest hook (a recheck loads this file as a plugin): record the test that failed.

    When ``$MUTATION_RUNNER_KILLS`` names a file, each failed test phase appends a line
    ``<mutant under test>\t<test id>`` to it (`` (setup)`` or `` (teardown)`` added when the
    failure was not in the test's call). mutmut 3 keeps only each mutant's exit code; this is
    how a recheck tells which test killed a mutant. Without the variable it does nothing.
    """
    path = os.environ.get(KILLS_ENV)
    if not path or not report.failed:
        return
    try:
        from mutmut.mutation.trampoline import get_mutant_under_test
        mutant = get_mutant_under_test()
    except ImportError:
        mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    when = "" if report.when == "call" else f" ({report.when})"
    with open(path, "a") as out:
        out.write(f"{mutant}\t{report.nodeid}{when}\n")


def read_kills(path: Path, names) -> dict[str, str]:
    """The first failed test ``pytest_runtest_logreport`` recorded for each mutant in ``names``
    (other lines, e.g. mutmut's forced-failure run under the name ``fail``, are ignored)."""
    out: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            mutant, _, test = line.partition("\t")
            if mutant in names and test and mutant not in out:
                out[mutant] = test
    return out


def add_kill_recorder(root: Path) -> None:
    """Load this file as a pytest plugin in the mutants' tests: append ``-p tests.mutation.run``
    to ``[tool.mutmut] pytest_add_cli_args`` of ``root/pyproject.toml`` (the work copy)."""
    path = root / "pyproject.toml"
    text = path.read_text()
    text, count = re.subn(r"^(pytest_add_cli_args = \[.*?)\s*\]", rf'\1, "-p", "{KILL_RECORDER}"]', text,
                          count=1, flags=re.M)
    if count != 1:
        raise RuntimeError(f"{path}: no one-line [tool.mutmut] pytest_add_cli_args list to extend")
    path.write_text(text)


def run_lines(run: dict) -> list[str]:
    """The report lines that say how a run was made (command, date, commit, versions, time, load, status)."""
    return [
        f"- command: `{run['command']}`",
        f"- date: {run['date']}; commit {run['commit']}",
        f"- mutmut {run['mutmut']}, Python {run['python']}, {run['cpus']} CPUs; wall time {run['wall'] / 60:.1f} min; "
        f"1-minute load average before {run['load'][0]:.2f}, after {run['load'][1]:.2f}",
        f"- mutmut exit status {run['rc']}",
    ]


def recheck_result(row: Recheck, status: dict[str, str]) -> str:
    """killed / timeout / crashed / survived / no tests / not checked, or stale."""
    return "stale" if row.mutant is None else status.get(row.mutant.name, "not checked")


def write_recheck_report(path: Path, run: dict, rows: list[Recheck], status: dict[str, str],
                         killers: dict[str, str], tests: dict[str, list[str]]) -> dict[str, int]:
    """Write a recheck's report (one table, no score); return how many entries had each result."""
    counts: dict[str, int] = {}
    for row in rows:
        result = recheck_result(row, status)
        counts[result] = counts.get(result, 0) + 1
    lines = [
        "# Mutation recheck report",
        "",
        "Written by `tests/mutation/run.py --recheck`; regenerate it, do not edit it by hand. A recheck",
        "runs named mutants, not a sample: it gives no score.",
        "",
        *run_lines(run),
        f"- rechecked: {run['selection']}",
        "- each entry is matched as a sampled survivor is: by name when that mutant has the entry's diff,",
        "  else by function and diff (renumbered); no match: stale, not run. Each mutant runs the",
        "  default-profile tests that call the mutated function, as in a sampled run; `killed by` is the",
        "  first test that failed (recorded by the runner's pytest hook; empty when none was recorded).",
        "- results: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
        "",
        "| entry | module | result | killed by | mutant run | tests calling it |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        result = recheck_result(row, status)
        name = row.mutant.name if row.mutant is not None else ""
        killer = killers.get(name, "") if result in DETECTED else ""
        note = row.match + (f" (inside a {row.mutant.excluded}: a sample leaves it out)"
                            if row.mutant is not None and row.mutant.excluded else "")
        n_tests = str(len(tests.get(name, []))) if name else ""
        lines.append(f"| `{row.entry}` | {row.module or ''} | {result} | {f'`{killer}`' if killer else ''} "
                     f"| {note} | {n_tests} |")
    lines.append("")
    path.write_text("\n".join(lines))
    return counts


# --------------------------------------------------------------------------- running

def copy_tree(dest: Path) -> None:
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=IGNORED_IN_COPY)
        else:
            shutil.copy2(src, dest / name)


def run_mutmut(workdir: Path, names: list[str], max_children: int, log: Path,
               extra_env: dict[str, str] | None = None) -> int:
    env = dict(os.environ)
    env.update(extra_env or {})
    for var in ("PYTHONPATH", "REFERENCE_HYPOTHESIS_PROFILE", "REFERENCE_SLOW"):
        env.pop(var, None)              # the default test run: ci profile, no slow tests
    env["PYTHONHASHSEED"] = "0"         # mutmut hands the tests over as a set: fix their order
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")        # one BLAS thread per worker; --max-children sets the parallelism
    cmd = [sys.executable, "-c", "import sys; from mutmut.__main__ import cli; sys.exit(cli())",
           "run", "--max-children", str(max_children), *names]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
        for line in proc.stdout:
            out.write(line)
            out.flush()
            if not ("\u2800" <= line[:1] <= "\u28ff"):   # skip the spinner / progress lines
                sys.stdout.write(line)
                sys.stdout.flush()
        return proc.wait()


def category(code: int | None) -> str:
    if code in KILLED_CODES:
        return "killed"
    if code in TIMEOUT_CODES:
        return "timeout"
    if code in SURVIVED_CODES:
        return "survived"
    if code in NO_TESTS_CODES:
        return "no tests"
    if code is None:
        return "not checked"
    return "crashed"      # any other signal or exit code: the tests did not pass, so detected


DETECTED = ("killed", "timeout", "crashed")
UNDETECTED = ("survived", "no tests")


def git_describe() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" plus uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def pct(a: int, b: int) -> str:
    return f"{100 * a / b:.1f}%" if b else "n/a"


def write_report(path: Path, run: dict, sample: dict[str, list[Mutant]], totals: dict[str, tuple[int, int, int]],
                 status: dict[str, str], tests: dict[str, list[str]],
                 verdicts: dict[str, Verdict], by_seed: dict[str, dict[int, list[str]]] | None = None
                 ) -> tuple[int, int, int]:
    """Write the report; return (sampled and checked, detected, equivalent survivors) of the pool.

    ``by_seed[module][seed]``: the names each seed drew (for the per-seed table); None for one seed.
    """
    modules = list(sample)
    seeds = run.get("seeds", [run.get("seed")])
    lines = [
        "# Mutation testing report",
        "",
        "Written by `tests/mutation/run.py`; regenerate it, do not edit it by hand. Equivalent",
        "survivors are listed, with the reason, in `tests/mutation/survivors.md`.",
        "",
        *run_lines(run),
        f"- seeds: {', '.join(str(x) for x in seeds)} ({run.get('seed_origin', 'given')}); repeat this sample with "
        f"`--seed {' '.join(str(x) for x in seeds)}`",
        "- sample: per module and seed, a seeded uniform draw of `--per-module` of mutmut's mutants, leaving out",
        "  those inside a `raise` statement or a docstring; the samples of the seeds are pooled (a mutant",
        "  drawn by two seeds runs and counts once). Each mutant runs the default-profile tests that call the",
        "  mutated function ([tool.mutmut] in pyproject.toml says which tests are left out).",
        "- detected = killed + timeout + crashed; score = detected / sampled; the last column leaves out",
        "  the survivors that survivors.md marks `equivalent` (with an unchanged diff), with its exact",
        f"  {CONFIDENCE:.0%} binomial (Clopper-Pearson) interval, `scipy.stats.binomtest(k, n).proportion_ci()`.",
        "",
        "| module | mutants (excluded: raise, docstring) | sampled | killed | timeout | crashed | survived "
        f"| no tests | score | equivalent | score over non-equivalent [{CONFIDENCE:.0%} interval] |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    equivalent_names: set[str] = set()
    module_scores: dict[str, tuple[int, int]] = {}
    grand = dict(sampled=0, detected=0, equivalent=0)
    counts_by_cat = {c: 0 for c in (*DETECTED, *UNDETECTED, "not checked")}
    survivors: list[Mutant] = []
    for module in modules:
        ms = sample[module]
        cats = {c: 0 for c in counts_by_cat}
        equivalent = 0
        for m in ms:
            c = status[m.name]
            cats[c] += 1
            counts_by_cat[c] += 1
            if c in UNDETECTED:
                survivors.append(m)
                v, _ = lookup(verdicts, m, m.diff())
                if v and v.verdict.startswith("equivalent"):
                    equivalent += 1
                    equivalent_names.add(m.name)
        detected = sum(cats[c] for c in DETECTED)
        n = len(ms) - cats["not checked"]
        total, n_raise, n_doc = totals[module]
        module_scores[module] = (detected, n - equivalent)
        lines.append(f"| {module} | {total} ({n_raise}, {n_doc}) | {len(ms)} | {cats['killed']} | {cats['timeout']} "
                     f"| {cats['crashed']} | {cats['survived']} | {cats['no tests']} | {pct(detected, n)} "
                     f"| {equivalent} | {pct_ci(detected, n - equivalent)} |")
        grand["sampled"] += n
        grand["detected"] += detected
        grand["equivalent"] += equivalent
    s, d, e = grand["sampled"], grand["detected"], grand["equivalent"]
    lines.append(f"| **all** | {sum(t[0] for t in totals.values())} | {s} | {counts_by_cat['killed']} "
                 f"| {counts_by_cat['timeout']} | {counts_by_cat['crashed']} | {counts_by_cat['survived']} "
                 f"| {counts_by_cat['no tests']} | **{pct(d, s)}** | {e} | **{pct_ci(d, s - e)}** |")
    met = s - e > 0 and d >= TARGET * (s - e)
    below = [mod for mod, (dm, nm) in module_scores.items() if nm > 0 and dm < MODULE_TARGET * nm]
    lines += ["", f"Target: at least {TARGET:.0%} of the non-equivalent sampled mutants detected, pooled: "
                  f"**{'met' if met else 'not met'}** ({d} of {s - e}); at least {MODULE_TARGET:.0%} in every module: "
                  f"**{'met' if not below else 'not met'}**" + (f" (below: {', '.join(below)})." if below else "."),
              "The targets are judged on the point estimates; the intervals say how far a fresh sample of the",
              "same size may fall from them."]
    if by_seed and len(seeds) > 1:
        lines += ["", "Per seed (each seed's own sample, all modules; the pool above counts a shared mutant once):", "",
                  "| seed | sampled | detected | equivalent | score over non-equivalent "
                  f"[{CONFIDENCE:.0%} interval] |", "|---|---|---|---|---|"]
        for seed in seeds:
            names = [x for module in modules for x in by_seed.get(module, {}).get(seed, [])
                     if status.get(x, "not checked") != "not checked"]
            ds = sum(1 for x in names if status[x] in DETECTED)
            es = sum(1 for x in names if x in equivalent_names)
            lines.append(f"| {seed} | {len(names)} | {ds} | {es} | {pct_ci(ds, len(names) - es)} |")
    if counts_by_cat["not checked"]:
        lines += ["", f"**{counts_by_cat['not checked']} sampled mutants were not checked** (the run stopped early); "
                      "they are left out of the scores."]
    lines += ["", f"## Survivors ({len(survivors)})", "",
              "Each: mutmut's name (`mutmut show <name>` in a kept work directory shows it too), where,",
              "how many tests call the mutated function, the verdict in survivors.md, and the diff.", ""]
    for m in survivors:
        diff = m.diff()
        v, stale = lookup(verdicts, m, diff)
        if v is not None:
            verdict = v.verdict + (f": {v.reason}" if v.reason else "")
        elif stale:
            verdict = "not listed in survivors.md (an entry of this name has another diff: stale)"
        else:
            verdict = "not listed in survivors.md"
        t = tests.get(m.name, [])
        lines += [f"### {m.name}", "",
                  f"- {status[m.name]}; {m.path}:{m.line}, in `{m.function}`; called by {len(t)} tests"
                  + (f" (e.g. `{t[0]}`)" if t else ""),
                  f"- verdict: {verdict}", "", "```diff", diff.rstrip("\n"), "```", ""]
    lines += ["## Every sampled mutant", "", "<details><summary>name, line, result</summary>", "", "```"]
    for module in modules:
        for m in sample[module]:
            lines.append(f"{status[m.name]:9s} {m.path}:{m.line:<5d} {m.name}")
    lines += ["```", "", "</details>", ""]
    path.write_text("\n".join(lines))
    return s, d, e


def enumerate_and_sample(root: Path, modules: list[str], per_module: int, seeds: list[int]):
    """(sample, totals, all mutants, each seed's names) per module; prints one line per module."""
    sample: dict[str, list[Mutant]] = {}
    totals: dict[str, tuple[int, int, int]] = {}
    all_mutants: dict[str, list[Mutant]] = {}
    by_seed: dict[str, dict[int, list[str]]] = {}
    for module in modules:
        mutants = all_mutants[module] = enumerate_mutants(root, module)
        n_raise = sum(1 for m in mutants if m.excluded == "raise")
        n_doc = sum(1 for m in mutants if m.excluded == "docstring")
        totals[module] = (len(mutants), n_raise, n_doc)
        sample[module], by_seed[module] = pooled_sample(mutants, module, per_module or len(mutants), seeds)
        print(f"{module:10s} {len(mutants):5d} mutants, {n_raise + n_doc:4d} in raise/docstrings, "
              f"{len(sample[module]):4d} sampled", flush=True)
    return sample, totals, all_mutants, by_seed


def configure_copy(root: Path, modules: list[str]) -> None:
    """Set ``[tool.mutmut]`` of ``root/pyproject.toml`` (the work copy): ``only_mutate`` = these modules,
    and ``figures/`` in ``also_copy`` (``python -m reference`` imports it for its subcommands)."""
    path = root / "pyproject.toml"
    text = path.read_text()
    files = "".join(f'    "reference/{m}.py",\n' for m in modules)
    text, count = re.subn(r"^only_mutate = \[\n.*?^\]", lambda _: f"only_mutate = [\n{files}]", text,
                          count=1, flags=re.M | re.S)
    if count != 1:
        raise RuntimeError(f"{path}: no [tool.mutmut] only_mutate list to set")
    if '"figures/"' not in text:
        text, count = re.subn(r"^also_copy = \[", 'also_copy = ["figures/", ', text, count=1, flags=re.M)
        if count != 1:
            raise RuntimeError(f"{path}: no [tool.mutmut] also_copy list to extend")
    path.write_text(text)


def collect_results(workdir: Path, sample: dict[str, list[Mutant]],
                    all_mutants: dict[str, list[Mutant]]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Each sampled mutant's result category, and the tests that call its function, from mutmut's files."""
    status: dict[str, str] = {}
    for module, ms in sample.items():
        meta = workdir / "mutants" / f"reference/{module}.py.meta"
        codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
        if codes:
            check_names(all_mutants[module], list(codes))
        for m in ms:
            status[m.name] = category(codes.get(m.name))
    stats_file = workdir / "mutants" / "mutmut-stats.json"
    by_function = json.loads(stats_file.read_text())["tests_by_mangled_function_name"] if stats_file.exists() else {}
    tests = {m.name: sorted(by_function.get(m.name.partition("__mutmut_")[0], []))
             for ms in sample.values() for m in ms}
    return status, tests


def open_workdir(args: argparse.Namespace) -> Path | None:
    """``--workdir`` (created if need be) or a new temporary directory; None if it already holds a copy."""
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mutation-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / "reference").exists():
        print(f"{workdir} already holds a copy; use an empty or new --workdir", file=sys.stderr)
        return None
    return workdir


def begin_run(args: argparse.Namespace) -> tuple[float, float, str, Path | None, bool]:
    """Start clock, load, the commit of the tree about to be copied, the work directory (None:
    refused) and whether to keep it."""
    t0 = time.monotonic()
    load_before = os.getloadavg()[0]
    commit = git_describe()           # of the tree copied now, whatever happens here during the run
    return t0, load_before, commit, open_workdir(args), args.keep or args.workdir is not None


def exit_status(rc: int, log: Path) -> int:
    """The runner's exit status for mutmut's ``rc`` (0 completed, 1 mutmut failed: its log named)."""
    if rc != 0:
        print(f"mutmut exited with status {rc}; its output is in {log}", file=sys.stderr)
        return 1
    return 0


def close_workdir(workdir: Path, keep: bool, hint: str) -> None:
    """Keep the work directory (say so, with ``hint``) or delete it."""
    if keep:
        print(f"work directory kept: {workdir}{hint}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def recheck(args: argparse.Namespace) -> int:
    """``--recheck``: run the mutants of the chosen survivors.md entries; write the table to ``--report``."""
    import mutmut

    verdicts = read_survivors(args.survivors)
    entries = select_entries(verdicts, args.names)
    selection = (f"the names given with --names ({len(entries)})" if args.names is not None else
                 f"the {len(entries)} entries of {args.survivors.name} with verdict `{NOT_YET_KILLED}`")
    print(f"recheck: {selection}", flush=True)
    if not entries:
        print(f"nothing to recheck: {args.survivors} has no entry with verdict `{NOT_YET_KILLED}`")
        return 0
    t0, load_before, commit, workdir, keep = begin_run(args)
    if workdir is None:
        return 2
    try:
        copy_tree(workdir)
        wanted = set()
        for entry in entries:
            try:
                wanted.add(module_of(entry))
            except ValueError:
                pass
        modules = [m for m in all_modules(workdir) if m in wanted]
        configure_copy(workdir, modules)
        add_kill_recorder(workdir)
        mutants_by_module = {module: enumerate_mutants(workdir, module) for module in modules}
        rows = [resolve(entry, verdicts.get(entry), mutants_by_module) for entry in entries]
        for row in rows:
            print(f"{row.entry}: {row.match}", flush=True)
        if args.dry_run:
            return 0
        sample: dict[str, list[Mutant]] = {module: [] for module in modules}
        for row in rows:                  # two entries may denote one mutant: it runs once
            if row.mutant is not None and all(m.name != row.mutant.name for m in sample[row.module]):
                sample[row.module].append(row.mutant)
        names = [m.name for ms in sample.values() for m in ms]
        log = workdir / "mutmut.log"
        kills = workdir / "kills.tsv"
        rc = 0
        if names:
            print(f"running mutmut on {len(names)} mutants with {args.max_children} workers in {workdir}",
                  flush=True)
            rc = run_mutmut(workdir, names, args.max_children, log, {KILLS_ENV: str(kills)})
        status, tests = collect_results(workdir, sample, mutants_by_module)
        killers = read_kills(kills, set(names))
        command = "python tests/mutation/run.py --recheck" + (f" --names {' '.join(entries)}" if args.names else "")
        run = dict(
            command=f"{command} --max-children {args.max_children}", recheck=True, entries=entries,
            selection=selection, date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            commit=commit, mutmut=mutmut.__version__, python=platform.python_version(),
            cpus=os.cpu_count(), wall=time.monotonic() - t0, load=(load_before, os.getloadavg()[0]), rc=rc)
        (workdir / "run.json").write_text(json.dumps(run, indent=1))
        counts = write_recheck_report(args.report, run, rows, status, killers, tests)
        print()
        for row in rows:
            result = recheck_result(row, status)
            killer = killers.get(row.mutant.name, "") if row.mutant is not None else ""
            print(f"{result:11s} {row.entry}" + (f"  (killed by {killer})" if killer and result in DETECTED else ""))
        print(f"\nrecheck of {len(rows)} entries: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
              + f"; wall time {run['wall'] / 60:.1f} min; report: {args.report}")
        keep = keep or rc != 0
        return exit_status(rc, log)
    finally:
        close_workdir(workdir, keep, "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Mutation testing (mutmut 3) of the core modules on a seeded random sample of mutants. "
                    "Writes tests/mutation/report.md. With --recheck, runs instead the mutants of the "
                    "survivors.md entries not yet killed (or --names) and writes tests/mutation/recheck.md. "
                    "Not part of the default test run or of CI.")
    p.add_argument("--seed", type=int, nargs="+", default=None, metavar="SEED",
                   help="sampling seed(s), pooled (default: --seeds fresh seeds drawn from the operating system, "
                        f"printed and recorded in the report; {TUNING_SEED} is the sample the tests were once tuned on)")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="how many fresh seeds to draw and pool when --seed is not given (default 1)")
    p.add_argument("--per-module", type=int, default=None,
                   help=f"mutants drawn per module and seed (default {DEFAULT_PER_MODULE}; 0 = all)")
    p.add_argument("--modules", nargs="+", default=None, metavar="MODULE",
                   help=f"modules of reference/ to mutate (default: {' '.join(all_modules())})")
    p.add_argument("--recheck", action="store_true",
                   help="instead of a sample, run exactly the mutants of the survivors.md entries whose verdict is "
                        "'not yet killed' (each found by name, or by function and diff if renumbered; an entry "
                        "that matches no mutant is reported stale), with the same tests and timeouts, and write "
                        "one table to --report: per entry killed / timeout / survived / stale, and the test that "
                        "killed it. No score: a recheck is not a sample")
    p.add_argument("--names", nargs="+", default=None, metavar="NAME",
                   help="with --recheck: these mutmut names (e.g. reference.softmax.x_topk_ids__mutmut_3) instead "
                        "of the 'not yet killed' entries; a name with a survivors.md entry (any verdict) is matched "
                        "as the entry is, another runs the mutant of that name")
    p.add_argument("--max-children", type=int, default=os.cpu_count() or 2,
                   help="mutants tested in parallel (default: the number of CPUs)")
    p.add_argument("--report", type=Path, default=None,
                   help="where to write the report (default: tests/mutation/report.md; with --recheck "
                        "tests/mutation/recheck.md)")
    p.add_argument("--survivors", type=Path, default=HERE / "survivors.md",
                   help="the list of survivors with their verdicts (read only)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="work directory, kept afterwards (default: a new temporary directory, deleted afterwards "
                        "unless --keep or mutmut fails)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (for `mutmut show/browse` there)")
    p.add_argument("--dry-run", action="store_true",
                   help="only enumerate and sample; print the sample (with --recheck: the mutant each entry "
                        "denotes)")
    p.add_argument("--rerender", type=Path, metavar="WORKDIR",
                   help="do not run: rewrite the report from the kept work directory of an earlier run "
                        "(e.g. after editing survivors.md)")
    args = p.parse_args(argv)
    if args.recheck:
        sampling = [opt for opt, value in (("--seed", args.seed), ("--seeds", args.seeds),
                                           ("--per-module", args.per_module), ("--modules", args.modules),
                                           ("--rerender", args.rerender)) if value is not None]
        if sampling:
            p.error(f"--recheck runs named mutants, not a sample: {', '.join(sampling)} does not apply")
        bad = []
        for name in args.names or []:
            try:
                module_of(name)
            except ValueError:
                bad.append(name)
        if bad:
            p.error(f"--names: expected mutmut names such as reference.softmax.x_topk_ids__mutmut_3, got {bad}")
    elif args.names is not None:
        p.error("--names: only with --recheck (a sampled run draws its mutants)")
    if args.report is None:
        args.report = HERE / ("recheck.md" if args.recheck else "report.md")
    args.seeds = 1 if args.seeds is None else args.seeds
    args.per_module = DEFAULT_PER_MODULE if args.per_module is None else args.per_module
    args.modules = all_modules() if args.modules is None else args.modules
    unknown = [m for m in args.modules if m not in all_modules()]
    if unknown:
        p.error(f"not a module the runner mutates: {unknown}; choose from {all_modules()} (or add it to CORE_MODULES)")
    if args.per_module < 0 or args.max_children < 1 or args.seeds < 1:
        p.error("--per-module must be >= 0, --max-children >= 1 and --seeds >= 1")
    if args.seed is not None and any(x < 0 for x in args.seed):
        p.error("--seed: expected integers >= 0")

    try:
        import mutmut
    except ImportError:
        print('mutmut is not installed: python -m pip install -e ".[mutation]"', file=sys.stderr)
        return 2

    if args.recheck:
        return recheck(args)

    if args.rerender:
        run = json.loads((args.rerender / "run.json").read_text())
        if run.get("recheck"):
            print(f"{args.rerender} holds a recheck, not a sample: run --recheck again", file=sys.stderr)
            return 2
        seeds = run.get("seeds", [run.get("seed")])
        sample, totals, all_mutants, by_seed = enumerate_and_sample(args.rerender, run["modules"],
                                                                    run["per_module"], seeds)
        status, tests = collect_results(args.rerender, sample, all_mutants)
        s, d, e = write_report(args.report, run, sample, totals, status, tests, read_survivors(args.survivors),
                               by_seed)
        print(f"score {pct(d, s)} ({d}/{s} detected); over non-equivalent mutants {pct_ci(d, s - e)}; "
              f"report: {args.report}")
        return 0

    if args.seed is not None:
        seeds, origin = list(dict.fromkeys(args.seed)), "given"
    else:
        seeds, origin = [fresh_seed() for _ in range(args.seeds)], "fresh"
    print(f"seeds: {' '.join(map(str, seeds))} ({origin}; repeat with --seed {' '.join(map(str, seeds))})",
          flush=True)

    t0, load_before, commit, workdir, keep = begin_run(args)
    if workdir is None:
        return 2
    try:
        copy_tree(workdir)
        configure_copy(workdir, args.modules)
        sample, totals, all_mutants, by_seed = enumerate_and_sample(workdir, args.modules, args.per_module, seeds)
        names = [m.name for ms in sample.values() for m in ms]
        if args.dry_run:
            for ms in sample.values():
                for m in ms:
                    print(f"{m.path}:{m.line:<5d} {m.name}")
            return 0

        print(f"running mutmut on {len(names)} mutants with {args.max_children} workers in {workdir}", flush=True)
        log = workdir / "mutmut.log"
        rc = run_mutmut(workdir, names, args.max_children, log)
        status, tests = collect_results(workdir, sample, all_mutants)
        run = dict(
            command=f"python tests/mutation/run.py --seed {' '.join(map(str, seeds))} --per-module {args.per_module} "
                    f"--modules {' '.join(args.modules)} --max-children {args.max_children}",
            seeds=seeds, seed_origin=origin, per_module=args.per_module, modules=args.modules,
            date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), commit=commit,
            mutmut=mutmut.__version__, python=platform.python_version(), cpus=os.cpu_count(),
            wall=time.monotonic() - t0, load=(load_before, os.getloadavg()[0]), rc=rc)
        (workdir / "run.json").write_text(json.dumps(run, indent=1))
        s, d, e = write_report(args.report, run, sample, totals, status, tests, read_survivors(args.survivors),
                               by_seed)
        print(f"\nseeds {' '.join(map(str, seeds))}: score {pct(d, s)} ({d}/{s} detected); over non-equivalent "
              f"mutants {pct_ci(d, s - e)} ({CONFIDENCE:.0%} interval); wall time {run['wall'] / 60:.1f} min; report: {args.report}")
        keep = keep or rc != 0
        return exit_status(rc, log)
    finally:
        close_workdir(workdir, keep, f" (rewrite the report from it: --rerender {workdir})")


if __name__ == "__main__":
    sys.exit(main())
