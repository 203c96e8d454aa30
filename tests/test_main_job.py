"""The README's command 1 (the main job), end to end through its subprocesses.

The default run drives ``compare --preset quick`` then ``figures`` at full
size (fixture ``main_job`` in ``tests/conftest.py``); the test marked slow
runs command 1 exactly as the README writes it (``compare`` at its default
budget), minus the ``pip install``.
"""

from __future__ import annotations

import json
import re

import pytest

from figures.run import figure_modules
from tests.conftest import run_main_job

_FIGURE_LINE = re.compile(r"^\[figures\] (\w+): (.+) \((\d+\.\d)s\)$")


def _check_main_job(job) -> None:
    """Every figure module drew its files, in order, and the run's last line counts them all."""
    names = list(figure_modules())
    lines = job.figures_stdout.strip().splitlines()
    drawn = [m.groups() for m in map(_FIGURE_LINE.match, lines) if m]
    assert [d[0] for d in drawn] == names
    for _, paths, _ in drawn:
        for p in paths.split(", "):
            path = job.cwd / p
            assert path.is_file() and path.stat().st_size > 0, p
            if path.suffix == ".png":
                assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", p
    assert re.fullmatch(rf"\[figures\] {len(names)} figures in \d+\.\ds -> figures/out", lines[-1]), lines[-1]
    curves = dict((d[0], d[1]) for d in drawn)["training_curves"]
    assert "figures/out/compare.json" in curves.split(", ")   # plotted from compare's own output
    assert "Claim 2" in job.compare_stdout and json.loads((job.out / "compare.json").read_text())["runs"]


def test_main_job_draws_every_figure(main_job):
    _check_main_job(main_job)
    assert json.loads((main_job.out / "compare.json").read_text())["preset"] == "quick"


@pytest.mark.slow
def test_main_job_at_the_readme_budget(tmp_path):
    """Command 1 exactly as written (default ``compare``: 3 seeds, N = 2000): several minutes."""
    job = run_main_job(tmp_path, [], timeout=3600)
    _check_main_job(job)
    assert json.loads((job.out / "compare.json").read_text())["preset"] == "default"
