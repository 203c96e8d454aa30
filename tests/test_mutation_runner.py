"""The mutation runner's own logic (tests/mutation/run.py), without mutmut: seeds, pooling, intervals, the work copy.

mutmut itself is not needed: the sample is drawn from stand-in mutants, and the runner's
configuration of its work copy is checked on a copy of this repository's pyproject.toml.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from scipy.stats import beta

RUN_PY = Path(__file__).resolve().parent / "mutation" / "run.py"


@pytest.fixture(scope="module")
def run():
    spec = importlib.util.spec_from_file_location("mutation_run", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutation_run"] = module          # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("mutation_run", None)


def _mutants(run, module: str, n: int, excluded_every: int = 5):
    return [run.Mutant(name=f"reference.{module}.x_f__mutmut_{i + 1}", module=module, path=f"reference/{module}.py",
                       function="f", line=i, excluded="raise" if i % excluded_every == 0 else None)
            for i in range(n)]


@pytest.mark.parametrize("k, n", [(0, 7), (1, 1), (19, 20), (342, 360), (40, 40)])
def test_interval_is_clopper_pearson(run, k: int, n: int) -> None:
    """The exact interval: Beta(k, n - k + 1) and Beta(k + 1, n - k) quantiles at 2.5% and 97.5%."""
    low, high = run.interval(k, n)
    want_low = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
    want_high = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
    assert low == pytest.approx(want_low, abs=1e-9) and high == pytest.approx(want_high, abs=1e-9)
    assert run.interval(0, 0) is None and run.pct_ci(3, 0) == "n/a"
    assert run.pct_ci(19, 20) == f"95.0% [{100 * beta.ppf(0.025, 19, 2):.1f}%, {100 * beta.ppf(0.975, 20, 1):.1f}%]"


def test_pooled_sample_is_the_union_of_the_seeds_samples_without_repeats(run) -> None:
    mutants = _mutants(run, "softmax", 60)
    pool, by_seed = run.pooled_sample(mutants, "softmax", 10, [1, 2, 3])
    names = [m.name for m in pool]
    assert set(by_seed) == {1, 2, 3}
    for seed, drawn in by_seed.items():
        assert drawn == [m.name for m in run.draw_sample(mutants, "softmax", 10, seed)]
        assert len(drawn) == 10 and len(set(drawn)) == 10
        assert all(m.excluded is None for m in mutants if m.name in drawn)   # raise/docstring never drawn
    assert sorted(set(names)) == sorted(names) == sorted({x for d in by_seed.values() for x in d})
    assert names == [m.name for m in mutants if m.name in set(names)]       # mutmut's order
    assert len(names) > 10                                                   # the seeds drew different samples
    # one seed alone: its own sample, in mutmut's order
    assert [m.name for m in run.pooled_sample(mutants, "softmax", 10, [2])[0]] == sorted(
        by_seed[2], key=[m.name for m in mutants].index)


def test_fresh_seeds_are_32_bit_and_differ(run) -> None:
    """False alarm: two of 8 seeds from the OS's random source collide with probability 28 / 2^32 < 1e-8."""
    seeds = {run.fresh_seed() for _ in range(8)}
    assert len(seeds) == 8 and all(0 <= s < 2**32 for s in seeds)


def test_report_records_the_seeds_and_the_intervals(run, tmp_path) -> None:
    """The report names every seed, the command that repeats the sample, and the exact interval
    per module, pooled and per seed (stand-in mutants, all detected but one)."""
    sample, by_seed, status = {}, {}, {}
    for module in ("softmax", "tree"):
        mutants = _mutants(run, module, 40)
        sample[module], by_seed[module] = run.pooled_sample(mutants, module, 6, [11, 22])
        for m in sample[module]:
            status[m.name] = "killed"
    status[sample["tree"][0].name] = "timeout"
    rec = dict(command="python tests/mutation/run.py --seed 11 22", date="2026-12-06 00:00 UTC", commit="abc",
               mutmut="3.8.1", python="3.11", cpus=2, wall=60.0, load=(1.0, 2.0), rc=0, seeds=[11, 22],
               seed_origin="fresh")
    totals = {m: (40, 8, 0) for m in sample}
    s, d, e = run.write_report(tmp_path / "r.md", rec, sample, totals, status, {}, {}, by_seed)
    text = (tmp_path / "r.md").read_text()
    n = len(sample["softmax"]) + len(sample["tree"])
    assert (s, d, e) == (n, n, 0)
    assert "- seeds: 11, 22 (fresh); repeat this sample with `--seed 11 22`" in text
    assert f"| **{run.pct(n, n)}** | 0 | **{run.pct_ci(n, n)}** |" in text
    k = len(sample["tree"])
    assert f"| tree | 40 (8, 0) | {k} | {k - 1} | 1 | 0 | 0 | 0 | 100.0% | 0 | {run.pct_ci(k, k)} |" in text
    for seed in (11, 22):
        assert f"| {seed} | 12 | 12 | 0 | {run.pct_ci(12, 12)} |" in text


def test_work_copy_mutates_the_chosen_modules_and_copies_figures(run, tmp_path) -> None:
    text = (RUN_PY.parents[2] / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(text.replace('"figures/", ', "").replace(', "figures/"', ""))
    run.configure_copy(tmp_path, ["softmax", "conformance/kit"])
    text = (tmp_path / "pyproject.toml").read_text()
    block = text.split("only_mutate = [", 1)[1].split("]", 1)[0]
    assert [line.strip() for line in block.strip().splitlines()] == ['"reference/softmax.py",',
                                                                     '"reference/conformance/kit.py",']
    also_copy = next(line for line in text.splitlines() if line.startswith("also_copy = ["))
    assert also_copy.count('"figures/"') == 1
    run.configure_copy(tmp_path, ["tree"])                        # again: figures/ listed once
    assert (tmp_path / "pyproject.toml").read_text().count('"figures/"') == 1
    assert "figures" in run.COPIED


def test_conformance_modules_follow_the_tree(run, tmp_path) -> None:
    (tmp_path / "reference").mkdir()
    assert run.conformance_modules(tmp_path) == []
    (tmp_path / "reference" / "conformance.py").write_text("")
    assert run.conformance_modules(tmp_path) == ["conformance"]
    (tmp_path / "reference" / "conformance.py").unlink()
    (tmp_path / "reference" / "conformance").mkdir()
    for name in ("kit.py", "__init__.py", "scenarios.py"):
        (tmp_path / "reference" / "conformance" / name).write_text("")
    assert run.conformance_modules(tmp_path) == ["conformance/__init__", "conformance/kit", "conformance/scenarios"]
    assert run.all_modules(tmp_path)[: len(run.CORE_MODULES)] == list(run.CORE_MODULES)


def test_arguments(run, capsys, monkeypatch) -> None:
    def no_run(*args, **kwargs):
        raise AssertionError("the arguments were accepted: a mutation run would start")

    monkeypatch.setattr(run, "open_workdir", no_run)
    monkeypatch.setattr(run, "copy_tree", no_run)
    with pytest.raises(SystemExit) as info:
        run.main(["--seeds", "0"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        run.main(["--seed", "-3"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        run.main(["--modules", "persist"])
    assert info.value.code == 2 and "persist" in capsys.readouterr().err


# --------------------------------------------------------------------------- --recheck

def _diff(old: str, new: str) -> str:
    return f"--- a/reference/m.py\n+++ b/reference/m.py\n@@ -1,3 +1,3 @@\n x = 1\n-{old}\n+{new}\n y = 2\n"


def _survivors_md(entries) -> str:
    """A survivors.md in the documented format: (name, verdict, diff) per entry."""
    blocks = ["# Surviving mutants\n\nSome prose; a `- verdict: equivalent` quoted in it is not an entry.\n"]
    for name, verdict, diff in entries:
        blocks.append(f"### {name}\n\n- verdict: {verdict}\n- reason: because\n\n```diff\n{diff}```\n")
    return "\n".join(blocks)


def test_module_of_reads_the_module_from_a_mutmut_name(run) -> None:
    assert run.module_of("reference.softmax.x_topk_ids__mutmut_3") == "softmax"
    assert run.module_of("reference._fastpath.x_refine__mutmut_341") == "_fastpath"
    assert run.module_of("reference.tree.xǁTreeǁ_reindex__mutmut_66") == "tree"
    assert run.module_of("reference.conformance.kit.xǁKitǁrun__mutmut_1") == "conformance/kit"
    for bad in ("softmax.x_f__mutmut_1", "reference.x_f__mutmut_1", "reference.softmax.x_f", "reference..x_f__mutmut_1",
                "tests.softmax.x_f__mutmut_1", ""):
        with pytest.raises(ValueError, match=r"^name: expected a mutmut name .*, got '"):
            run.module_of(bad)


def test_recheck_selects_the_entries_not_yet_killed_in_the_files_order(run, tmp_path) -> None:
    d1, d2 = _diff("a = b", "a = c"), _diff("p < q", "p <= q")
    path = tmp_path / "survivors.md"
    path.write_text(_survivors_md([
        ("reference.tree.x_f__mutmut_9", "not yet killed", d1),
        ("reference.softmax.x_g__mutmut_2", "equivalent", d2),
        ("reference.plain.x_h__mutmut_1", "Not yet killed", d2),        # verdicts are read case-insensitively
        ("reference.bounds.x_k__mutmut_4", "killed by a test, confirm", d1),
        ("reference.dynamic.x_m__mutmut_7", "not yet killed", d1),
    ]))
    verdicts = run.read_survivors(path)
    assert run.select_entries(verdicts) == ["reference.tree.x_f__mutmut_9", "reference.plain.x_h__mutmut_1",
                                            "reference.dynamic.x_m__mutmut_7"]
    # --names: exactly those, in the order given, once each, whatever their verdict (or none)
    names = ["reference.softmax.x_g__mutmut_2", "reference.nystrom.x_z__mutmut_1", "reference.softmax.x_g__mutmut_2"]
    assert run.select_entries(verdicts, names) == names[:2]
    assert run.select_entries({}) == []


def _module_mutants(run, module: str, functions: dict[str, list[str]]):
    """Stand-in mutants of ``module``: per function, its mutants' diffs in mutmut's order."""
    out, diffs = [], {}
    for function, function_diffs in functions.items():
        for i, diff in enumerate(function_diffs):
            m = run.Mutant(name=f"reference.{module}.x_{function}__mutmut_{i + 1}", module=module,
                           path=f"reference/{module}.py", function=function, line=i, excluded=None)
            out.append(m)
            diffs[m.name] = diff
    return out, diffs


def test_recheck_finds_each_entry_by_name_or_by_function_and_diff_else_stale(run) -> None:
    a, b, c, d = (_diff("a = b", "a = c"), _diff("p < q", "p <= q"), _diff("n + 1", "n - 1"), _diff("k", "None"))
    mutants, diffs = _module_mutants(run, "tree", {"f": [a, b, c], "g": [d, a]})
    by_module = {"tree": mutants, "softmax": []}

    def resolve(entry, diff):
        verdict = None if diff is None else run.Verdict("not yet killed", "", run.changed_lines(diff))
        row = run.resolve(entry, verdict, by_module, diff=lambda m: diffs[m.name])
        return (row.mutant.name if row.mutant else None), row.match

    # its name, with its diff
    assert resolve("reference.tree.x_f__mutmut_2", b) == ("reference.tree.x_f__mutmut_2", "by name")
    # renumbered: the name now holds another mutation; the one of the entry's diff runs under its new name
    assert resolve("reference.tree.x_f__mutmut_1", c) == (
        "reference.tree.x_f__mutmut_3", "by function and diff: now `reference.tree.x_f__mutmut_3`")
    assert resolve("reference.tree.x_f__mutmut_7", b)[0] == "reference.tree.x_f__mutmut_2"   # the name is gone
    assert resolve("reference.tree.x_g__mutmut_1", a) == (
        "reference.tree.x_g__mutmut_2", "by function and diff: now `reference.tree.x_g__mutmut_2`")
    # the same diff in another function does not match (f's mutant 1 and g's mutant 2 have diff a)
    assert resolve("reference.tree.x_h__mutmut_1", a) == (
        None, "stale: no mutant of this name, and no mutant of its function has the entry's diff")
    # stale: the name holds another diff and no mutant of its function has the entry's
    assert resolve("reference.tree.x_g__mutmut_1", b) == (
        None, "stale: the mutant of this name has another diff, and no other mutant of its function has the entry's")
    assert resolve("reference.tree.x_f__mutmut_9", d)[0] is None
    # a module the runner does not mutate (or no longer has), and not a mutmut name at all
    assert resolve("reference.persist.x_f__mutmut_1", a) == (None, "stale: not a module the runner mutates")
    assert resolve("persist.f", a) == (None, "stale: not a mutmut name")
    # a name with no survivors.md entry: the mutant of that name, with no diff to compare
    assert resolve("reference.tree.x_g__mutmut_1", None) == ("reference.tree.x_g__mutmut_1",
                                                              "by name (no survivors.md entry)")
    assert resolve("reference.tree.x_g__mutmut_3", None) == (None, "stale: no mutant of this name")


def test_recheck_prefers_the_named_mutant_when_two_of_a_function_have_the_entrys_diff(run) -> None:
    a = _diff("a = b", "a = c")
    mutants, diffs = _module_mutants(run, "plain", {"f": [a, a]})
    verdict = run.Verdict("not yet killed", "", run.changed_lines(a))
    row = run.resolve("reference.plain.x_f__mutmut_2", verdict, {"plain": mutants}, diff=lambda m: diffs[m.name])
    assert row.mutant is mutants[1] and row.match == "by name"


def test_recheck_uses_the_matching_that_gives_a_sampled_survivor_its_verdict(run, monkeypatch) -> None:
    """One matcher: resolve finds nothing that lookup (the sampled run's matcher) does not confirm."""
    a = _diff("a = b", "a = c")
    mutants, diffs = _module_mutants(run, "tree", {"f": [a]})
    verdict = run.Verdict("not yet killed", "", run.changed_lines(a))
    calls = []
    monkeypatch.setattr(run, "lookup", lambda verdicts, m, diff: calls.append(m.name) or (None, False))
    row = run.resolve("reference.tree.x_f__mutmut_1", verdict, {"tree": mutants}, diff=lambda m: diffs[m.name])
    assert row.mutant is None and row.match.startswith("stale") and calls == ["reference.tree.x_f__mutmut_1"]


class _Report:
    def __init__(self, nodeid: str, failed: bool, when: str = "call") -> None:
        self.nodeid, self.failed, self.when = nodeid, failed, when


def test_the_kill_recorder_keeps_each_mutants_first_failing_test(run, tmp_path, monkeypatch) -> None:
    kills = tmp_path / "kills.tsv"
    monkeypatch.delenv(run.KILLS_ENV, raising=False)
    monkeypatch.setenv("MUTANT_UNDER_TEST", "reference.tree.x_f__mutmut_1")
    run.pytest_runtest_logreport(_Report("tests/test_a.py::test_x", True))
    assert not kills.exists()                                   # without the variable: nothing written
    monkeypatch.setenv(run.KILLS_ENV, str(kills))
    for mutant, nodeid, failed, when in [
        ("fail", "tests/test_a.py::test_forced", True, "call"),    # mutmut's forced-failure run
        ("reference.tree.x_f__mutmut_1", "tests/test_a.py::test_passes", False, "call"),
        ("reference.tree.x_f__mutmut_1", "tests/test_a.py::test_x", True, "call"),
        ("reference.tree.x_f__mutmut_1", "tests/test_a.py::test_x", True, "teardown"),
        ("reference.tree.x_g__mutmut_2", "tests/test_b.py::test_y[1-2]", True, "setup"),
    ]:
        monkeypatch.setenv("MUTANT_UNDER_TEST", mutant)
        run.pytest_runtest_logreport(_Report(nodeid, failed, when))
    names = {"reference.tree.x_f__mutmut_1", "reference.tree.x_g__mutmut_2", "reference.tree.x_h__mutmut_3"}
    assert run.read_kills(kills, names) == {"reference.tree.x_f__mutmut_1": "tests/test_a.py::test_x",
                                            "reference.tree.x_g__mutmut_2": "tests/test_b.py::test_y[1-2] (setup)"}
    assert run.read_kills(tmp_path / "none.tsv", names) == {}


def test_work_copy_of_a_recheck_loads_the_kill_recorder(run, tmp_path) -> None:
    (tmp_path / "pyproject.toml").write_text((RUN_PY.parents[2] / "pyproject.toml").read_text())
    run.add_kill_recorder(tmp_path)
    text = (tmp_path / "pyproject.toml").read_text()
    line = next(x for x in text.splitlines() if x.startswith("pytest_add_cli_args = ["))
    assert line.endswith(', "-p", "tests.mutation.run"]') and "tests.mutation.pytest_guard" in line
    assert run.KILL_RECORDER == "tests.mutation.run" and RUN_PY.parent.name == "mutation"
    assert "pytest_add_cli_args_test_selection = [\n" in text             # the other list untouched
    (tmp_path / "pyproject.toml").write_text("[tool.mutmut]\n")
    with pytest.raises(RuntimeError, match="pytest_add_cli_args"):
        run.add_kill_recorder(tmp_path)


def test_recheck_report_is_one_table_per_entry_without_a_score(run, tmp_path) -> None:
    mutants, _ = _module_mutants(run, "tree", {"f": ["", "", "", ""]})
    mutants[3].excluded = "raise"
    rows = [run.Recheck("reference.tree.x_f__mutmut_1", "tree", mutants[0], "by name"),
            run.Recheck("reference.tree.x_f__mutmut_9", "tree", mutants[1], "by function and diff: now `x`"),
            run.Recheck("reference.tree.x_f__mutmut_3", "tree", mutants[2], "by name"),
            run.Recheck("reference.tree.x_g__mutmut_1", "tree", None, "stale: no mutant of this name"),
            run.Recheck("reference.tree.x_f__mutmut_4", "tree", mutants[3], "by name")]
    status = {mutants[0].name: "killed", mutants[1].name: "survived", mutants[2].name: "timeout",
              mutants[3].name: "killed"}
    killers = {mutants[0].name: "tests/test_t.py::test_a", mutants[1].name: "tests/test_t.py::test_never",
               mutants[2].name: "tests/test_t.py::test_slow"}
    tests = {mutants[0].name: ["t1", "t2"], mutants[1].name: ["t1"], mutants[2].name: [], mutants[3].name: ["t3"]}
    rec = dict(command="python tests/mutation/run.py --recheck", date="2026-12-06 00:00 UTC", commit="abc",
               mutmut="3.8.1", python="3.11", cpus=2, wall=90.0, load=(1.0, 2.0), rc=0,
               selection="the 5 entries of survivors.md with verdict `not yet killed`")
    counts = run.write_recheck_report(tmp_path / "r.md", rec, rows, status, killers, tests)
    text = (tmp_path / "r.md").read_text()
    assert counts == {"killed": 2, "survived": 1, "timeout": 1, "stale": 1}
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table == [
        "| entry | module | result | killed by | mutant run | tests calling it |",
        "|---|---|---|---|---|---|",
        "| `reference.tree.x_f__mutmut_1` | tree | killed | `tests/test_t.py::test_a` | by name | 2 |",
        "| `reference.tree.x_f__mutmut_9` | tree | survived |  | by function and diff: now `x` | 1 |",
        "| `reference.tree.x_f__mutmut_3` | tree | timeout | `tests/test_t.py::test_slow` | by name | 0 |",
        "| `reference.tree.x_g__mutmut_1` | tree | stale |  | stale: no mutant of this name |  |",
        "| `reference.tree.x_f__mutmut_4` | tree | killed |  | by name (inside a raise: a sample leaves it out) | 1 |",
    ]
    assert "- results: killed 2, stale 1, survived 1, timeout 1" in text
    assert "- rechecked: the 5 entries of survivors.md with verdict `not yet killed`" in text
    assert "score" not in text.replace("it gives no score", "")
    # a mutant the run did not reach
    run.write_recheck_report(tmp_path / "r2.md", rec, rows[:1], {}, {}, {})
    assert "| tree | not checked |" in (tmp_path / "r2.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--names", "reference.softmax.x_f__mutmut_1"], "--names: only with --recheck"),
    (["--recheck", "--seed", "3"], "--recheck runs named mutants, not a sample: --seed does not apply"),
    (["--recheck", "--per-module", "5", "--modules", "tree"], "--per-module, --modules does not apply"),
    (["--recheck", "--names", "reference.softmax.x_f__mutmut_1", "topk_ids"],
     "--names: expected mutmut names such as reference.softmax.x_topk_ids__mutmut_3, got ['topk_ids']"),
])
def test_recheck_arguments(run, capsys, monkeypatch, argv, message) -> None:
    """Bad combinations are refused before anything runs (were one accepted, the guard stops the run)."""
    def no_run(*args, **kwargs):
        raise AssertionError("the arguments were accepted: a mutation run would start")

    monkeypatch.setattr(run, "open_workdir", no_run)
    monkeypatch.setattr(run, "copy_tree", no_run)
    with pytest.raises(SystemExit) as info:
        run.main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err
