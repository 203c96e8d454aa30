"""Fixtures shared by ``tests/``: the README's main job, run once per session.

``main_job`` runs command 1 of the README as a new user's shell would (two
subprocesses, ``python -m reference compare`` then ``python -m reference
figures``, default output paths, relative to a fresh working directory), with
the one difference that ``compare`` uses ``--preset quick``. Every figure is
therefore drawn at the size the README command draws it; only the training
curves plot a smaller comparison. The figure tests read their CSVs from it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass
class MainJob:
    """Where the main job ran and what it printed."""

    cwd: Path
    out: Path               # figures/out under cwd: compare.json and every figure's PNG and CSV
    compare_stdout: str
    figures_stdout: str


def run_main_job(cwd: Path, compare_args: list[str], timeout: float) -> MainJob:
    """``python -m reference compare [compare_args] && python -m reference figures`` in ``cwd``.

    Raises ``AssertionError`` with the command's output if either exits non-zero.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    outputs = []
    for cmd in (["compare", *compare_args], ["figures"]):
        proc = subprocess.run([sys.executable, "-m", "reference", *cmd], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout)
        assert proc.returncode == 0, (
            f"`python -m reference {' '.join(cmd)}` exited {proc.returncode}\n"
            f"--- stdout (end)\n{proc.stdout[-3000:]}\n--- stderr (end)\n{proc.stderr[-3000:]}")
        outputs.append(proc.stdout)
    return MainJob(cwd, cwd / "figures" / "out", *outputs)


@pytest.fixture(scope="session")
def main_job(tmp_path_factory: pytest.TempPathFactory) -> MainJob:
    """Command 1 with ``compare --preset quick``: about a minute on 2 cores."""
    return run_main_job(tmp_path_factory.mktemp("main_job"), ["--preset", "quick"], timeout=900)
