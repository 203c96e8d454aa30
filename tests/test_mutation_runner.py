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


def test_arguments(run, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        run.main(["--seeds", "0"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        run.main(["--seed", "-3"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        run.main(["--modules", "persist"])
    assert info.value.code == 2 and "persist" in capsys.readouterr().err
