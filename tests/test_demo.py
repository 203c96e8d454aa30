"""CLI test of ``python -m reference demo`` on a tiny configuration (about a second)."""

from __future__ import annotations

import re

import pytest

from reference.cli import main

TINY = ["demo", "--targets", "200", "--dim", "16", "--hidden", "32", "--out-dim", "16",
        "--steps", "60", "--batch-size", "64", "--eval-every", "20", "--seed", "0"]  # fmt: skip

PROGRESS = re.compile(
    r"^step +(?P<step>\d+)  train loss +(?P<train>-|[\d.]+)  test loss +(?P<test>[\d.]+)  "
    r"test recall@1 (?P<r1>[\d.]+)  recall@10 (?P<r10>[\d.]+)  elapsed +(?P<t>[\d.]+)s$"
)
FINAL = re.compile(
    r"^final: test recall@1 (?P<r1>[\d.]+) \(chance 1/N = (?P<chance>[\d.e-]+), \d+x chance\)  "
    r"recall@10 (?P<r10>[\d.]+) \(chance 10/N = (?P<chance10>[\d.e-]+)\)  "
    r"test loss (?P<loss>[\d.]+) \(uniform log N = (?P<logn>[\d.]+)\)  "
    r"target rows encoded (?P<rows>\d+)  elapsed (?P<t>[\d.]+)s$"
)


def _run(capsys, argv: list[str]) -> list[str]:
    assert main(argv) == 0
    return capsys.readouterr().out.splitlines()


def test_demo_prints_progress_and_beats_chance(capsys) -> None:
    lines = _run(capsys, TINY)
    assert lines[0].startswith("demo: N=200 targets")
    progress = [PROGRESS.match(line) for line in lines[1:-1]]
    assert all(progress), lines
    assert [int(m["step"]) for m in progress] == [0, 20, 40, 60]
    assert progress[0]["train"] == "-"
    final = FINAL.match(lines[-1])
    assert final, lines[-1]
    N = 200
    assert float(final["chance"]) == pytest.approx(1 / N)
    assert float(final["chance10"]) == pytest.approx(10 / N)
    # Deterministic (fixed seed): this run reaches recall@1 ~0.2 = 40x chance;
    # require 10x chance, and that training lowered the test loss below log N.
    r1 = float(final["r1"])
    assert r1 >= 10 / N, lines[-1]
    assert float(final["r1"]) == float(progress[-1]["r1"])
    assert float(final["loss"]) < float(final["logn"]) < float(progress[0]["test"])
    assert float(progress[-1]["test"]) < float(progress[1]["test"])
    assert int(final["rows"]) == 60 * N  # full softmax encodes all N targets per step


def test_demo_is_deterministic_and_quiet_prints_one_line(capsys) -> None:
    strip = re.compile(r"elapsed +[\d.]+s")
    loud = _run(capsys, TINY + ["--dtype", "float32"])
    quiet = _run(capsys, TINY + ["--dtype", "float32", "--quiet"])
    assert len(quiet) == 1
    assert strip.sub("", quiet[0]) == strip.sub("", loud[-1])


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--steps", "0"], "--steps"),
        (["--lr", "-1"], "--lr"),
        (["--beta", "0"], "--beta"),
        (["--targets", "1"], "--targets"),
        (["--noise", "nan"], "--noise"),
        (["--hidden", "0"], "--hidden"),
    ],
)
def test_demo_rejects_bad_options(capsys, extra: list[str], match: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(TINY + extra)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and match in err


def test_demo_rejects_unknown_choice(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(TINY + ["--activation", "sigmoid"])
    assert exc.value.code == 2
    assert "--activation" in capsys.readouterr().err
