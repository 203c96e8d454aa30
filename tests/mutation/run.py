#!/usr/bin/env python
"""Mutation testing of the core modules: a seeded random sample of mutmut's mutants.

Usage (from the repository root, after ``python -m pip install -e ".[test,mutation]"``)::

    python tests/mutation/run.py                 # 40 mutants per core module, the fixed seed
    python tests/mutation/run.py --per-module 5  # a quick look
    python tests/mutation/run.py --modules softmax plain --per-module 100

What it does
------------
1. Copies the working tree (``reference/``, ``tests/``, ``proofs/``, ``conftest.py``,
   ``pyproject.toml``) to a temporary directory. mutmut writes its ``mutants/`` tree there,
   never into the repository, and the run measures the tests as they were when it started.
2. Enumerates every mutant mutmut 3 generates for each core module (with mutmut's own
   generator, in mutmut's order and naming; after the run the names are checked against the
   ones mutmut recorded), drops those that lie inside a ``raise`` statement or a bare string
   statement (a docstring), and draws ``--per-module`` of the rest per module with
   ``random.Random(f"{seed}:{module}")``.
3. Runs ``mutmut run`` on that sample, with the ``[tool.mutmut]`` settings of
   ``pyproject.toml``: mutmut first runs the selected tests once to learn which tests call
   which function; then each mutant runs, in a process forked from that one, exactly the
   default-profile tests that call the mutated function, fastest first, stopping at the
   first failure. ``tests/mutation/pytest_guard.py`` keeps a failed test's ``tracemalloc``
   from slowing every later mutant twentyfold.
4. Writes ``tests/mutation/report.md``: per module killed / timeout / survived / no tests,
   the score, and the diff of every survivor. Survivors that ``tests/mutation/survivors.md``
   lists as ``equivalent`` (with the same diff) are left out of the score over
   non-equivalent mutants, the number the project's target (95 %) is about.

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
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

#: The core modules (reference/<name>.py) of the issue "An oracle with teeth" (the default run).
CORE_MODULES = ("softmax", "bounds", "sampling", "tree", "nystrom", "dynamic", "encoder", "_fastpath", "plain")


def _mutable_modules() -> tuple[str, ...]:
    """Every module [tool.mutmut] only_mutate lists, as a path under reference/ without .py
    (e.g. "conformance/topk"): what --modules accepts."""
    import tomllib

    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"]
    return tuple(p.removeprefix("reference/").removesuffix(".py") for p in listed)


MUTABLE_MODULES = _mutable_modules()
DEFAULT_SEED = 20230425
DEFAULT_PER_MODULE = 40
TARGET = 0.95      # of the non-equivalent mutants, killed (issue "An oracle with teeth")

#: What the runner copies into its working directory (mutmut copies it again into mutants/).
COPIED = ("reference", "tests", "proofs", "figures", "conftest.py", "pyproject.toml", "README.md")
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
    eligible = [m for m in mutants if m.excluded is None]
    rng = random.Random(f"{seed}:{module}")
    chosen = rng.sample(range(len(eligible)), min(n, len(eligible)))
    return [eligible[i] for i in sorted(chosen)]


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


# --------------------------------------------------------------------------- running

def copy_tree(dest: Path) -> None:
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=IGNORED_IN_COPY)
        else:
            shutil.copy2(src, dest / name)


def run_mutmut(workdir: Path, names: list[str], max_children: int, log: Path) -> int:
    env = dict(os.environ)
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
                 verdicts: dict[str, Verdict]) -> tuple[int, int, int]:
    """Write the report; return (sampled and checked, detected, equivalent survivors)."""
    modules = list(sample)
    lines = [
        "# Mutation testing report",
        "",
        "Written by `tests/mutation/run.py`; regenerate it, do not edit it by hand. Equivalent",
        "survivors are listed, with the reason, in `tests/mutation/survivors.md`.",
        "",
        f"- command: `{run['command']}`",
        f"- date: {run['date']}; commit {run['commit']}",
        f"- mutmut {run['mutmut']}, Python {run['python']}, {run['cpus']} CPUs; wall time {run['wall'] / 60:.1f} min; "
        f"1-minute load average before {run['load'][0]:.2f}, after {run['load'][1]:.2f}",
        f"- mutmut exit status {run['rc']}",
        "- sample: per module, a seeded uniform draw from mutmut's mutants, leaving out those inside a",
        "  `raise` statement or a docstring; each mutant runs the default-profile tests that call the",
        "  mutated function ([tool.mutmut] in pyproject.toml says which tests are left out).",
        "- detected = killed + timeout + crashed; score = detected / sampled; the last column leaves out",
        "  the survivors that survivors.md marks `equivalent` (with an unchanged diff).",
        "",
        "| module | mutants (excluded: raise, docstring) | sampled | killed | timeout | crashed | survived "
        "| no tests | score | equivalent | score over non-equivalent |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
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
        detected = sum(cats[c] for c in DETECTED)
        n = len(ms) - cats["not checked"]
        total, n_raise, n_doc = totals[module]
        lines.append(f"| {module} | {total} ({n_raise}, {n_doc}) | {len(ms)} | {cats['killed']} | {cats['timeout']} "
                     f"| {cats['crashed']} | {cats['survived']} | {cats['no tests']} | {pct(detected, n)} "
                     f"| {equivalent} | {pct(detected, n - equivalent)} |")
        grand["sampled"] += n
        grand["detected"] += detected
        grand["equivalent"] += equivalent
    s, d, e = grand["sampled"], grand["detected"], grand["equivalent"]
    lines.append(f"| **all** | {sum(t[0] for t in totals.values())} | {s} | {counts_by_cat['killed']} "
                 f"| {counts_by_cat['timeout']} | {counts_by_cat['crashed']} | {counts_by_cat['survived']} "
                 f"| {counts_by_cat['no tests']} | **{pct(d, s)}** | {e} | **{pct(d, s - e)}** |")
    met = s - e > 0 and d >= TARGET * (s - e)
    lines += ["", f"Target: at least {TARGET:.0%} of the non-equivalent sampled mutants detected: "
                  f"**{'met' if met else 'not met'}** ({d} of {s - e})."]
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


def enumerate_and_sample(root: Path, modules: list[str], per_module: int, seed: int):
    """(sample, totals, all mutants) per module; prints one line per module."""
    sample: dict[str, list[Mutant]] = {}
    totals: dict[str, tuple[int, int, int]] = {}
    all_mutants: dict[str, list[Mutant]] = {}
    for module in modules:
        mutants = all_mutants[module] = enumerate_mutants(root, module)
        n_raise = sum(1 for m in mutants if m.excluded == "raise")
        n_doc = sum(1 for m in mutants if m.excluded == "docstring")
        totals[module] = (len(mutants), n_raise, n_doc)
        sample[module] = draw_sample(mutants, module, per_module or len(mutants), seed)
        print(f"{module:10s} {len(mutants):5d} mutants, {n_raise + n_doc:4d} in raise/docstrings, "
              f"{len(sample[module]):4d} sampled", flush=True)
    return sample, totals, all_mutants


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Mutation testing (mutmut 3) of the core modules on a seeded random sample of mutants. "
                    "Writes tests/mutation/report.md. Not part of the default test run or of CI.")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"sampling seed (default {DEFAULT_SEED})")
    p.add_argument("--per-module", type=int, default=DEFAULT_PER_MODULE,
                   help=f"mutants drawn per module (default {DEFAULT_PER_MODULE}; 0 = all)")
    p.add_argument("--modules", nargs="+", default=list(CORE_MODULES), metavar="MODULE",
                   help=f"modules of reference/ to mutate (default: {' '.join(CORE_MODULES)}; any of "
                        "[tool.mutmut] only_mutate, e.g. conformance/topk)")
    p.add_argument("--max-children", type=int, default=os.cpu_count() or 2,
                   help="mutants tested in parallel (default: the number of CPUs)")
    p.add_argument("--report", type=Path, default=HERE / "report.md", help="where to write the report")
    p.add_argument("--survivors", type=Path, default=HERE / "survivors.md",
                   help="the list of survivors with their verdicts (read only)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="work directory, kept afterwards (default: a new temporary directory, deleted afterwards "
                        "unless --keep or mutmut fails)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (for `mutmut show/browse` there)")
    p.add_argument("--dry-run", action="store_true", help="only enumerate and sample; print the sample")
    p.add_argument("--rerender", type=Path, metavar="WORKDIR",
                   help="do not run: rewrite the report from the kept work directory of an earlier run "
                        "(e.g. after editing survivors.md)")
    args = p.parse_args(argv)
    unknown = [m for m in args.modules if m not in MUTABLE_MODULES]
    if unknown:
        p.error(f"not in [tool.mutmut] only_mutate: {unknown}; choose from {MUTABLE_MODULES}")
    if args.per_module < 0 or args.max_children < 1:
        p.error("--per-module must be >= 0 and --max-children >= 1")

    try:
        import mutmut
    except ImportError:
        print('mutmut is not installed: python -m pip install -e ".[mutation]"', file=sys.stderr)
        return 2

    if args.rerender:
        run = json.loads((args.rerender / "run.json").read_text())
        sample, totals, all_mutants = enumerate_and_sample(args.rerender, run["modules"], run["per_module"],
                                                           run["seed"])
        status, tests = collect_results(args.rerender, sample, all_mutants)
        s, d, e = write_report(args.report, run, sample, totals, status, tests, read_survivors(args.survivors))
        print(f"score {pct(d, s)} ({d}/{s} detected); over non-equivalent mutants {pct(d, s - e)}; "
              f"report: {args.report}")
        return 0

    t0 = time.monotonic()
    load_before = os.getloadavg()[0]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mutation-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / "reference").exists():
        print(f"{workdir} already holds a copy; use an empty or new --workdir", file=sys.stderr)
        return 2
    keep = args.keep or args.workdir is not None
    try:
        copy_tree(workdir)
        sample, totals, all_mutants = enumerate_and_sample(workdir, args.modules, args.per_module, args.seed)
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
            command=f"python tests/mutation/run.py --seed {args.seed} --per-module {args.per_module} "
                    f"--modules {' '.join(args.modules)} --max-children {args.max_children}",
            seed=args.seed, per_module=args.per_module, modules=args.modules,
            date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), commit=git_describe(),
            mutmut=mutmut.__version__, python=platform.python_version(), cpus=os.cpu_count(),
            wall=time.monotonic() - t0, load=(load_before, os.getloadavg()[0]), rc=rc)
        (workdir / "run.json").write_text(json.dumps(run, indent=1))
        s, d, e = write_report(args.report, run, sample, totals, status, tests, read_survivors(args.survivors))
        print(f"\nscore {pct(d, s)} ({d}/{s} detected); over non-equivalent mutants {pct(d, s - e)}; "
              f"wall time {run['wall'] / 60:.1f} min; report: {args.report}")
        if rc != 0:
            keep = True
            print(f"mutmut exited with status {rc}; its output is in {log}", file=sys.stderr)
            return 1
        return 0
    finally:
        if keep:
            print(f"work directory kept: {workdir} (rewrite the report from it: --rerender {workdir})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
