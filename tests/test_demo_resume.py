"""``python -m reference demo --checkpoint/--resume``: a run SIGKILLed at a random moment and resumed
ends bitwise identical to an uninterrupted one; a damaged checkpoint exits 2 naming the file.

Bitwise means: the ``--out`` JSON (final test loss / recall@1 / recall@10 as
exact float64 values, the whole evaluation history, the target-row counter and
the SHA-256 of the final parameters) is byte-for-byte the same file, and the
final printed line is the same once its elapsed-time field is removed. No
tolerance: the run is deterministic for a seed, so any difference is a bug
(e.g. a generator or the Adam moments not restored).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reference import persist

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
CMD = [sys.executable, "-m", "reference", "demo"]
STEPS = 600
# About 1 s of training on an idle 2-core CPU plus ~17 ms per (fsync-ed) checkpoint.
ARGS = ["--targets", "200", "--dim", "16", "--hidden", "32", "--out-dim", "16", "--steps", str(STEPS),
        "--batch-size", "64", "--eval-every", "50", "--seed", "3"]  # fmt: skip
EVERY = 20
ELAPSED = re.compile(r"elapsed +[\d.]+s")


def _final_line(stdout: str) -> str:
    last = stdout.splitlines()[-1]
    assert last.startswith("final: "), stdout[-2000:]
    return ELAPSED.sub("", last)


def _run(*extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CMD, *ARGS, *extra], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=120, check=False)


def test_demo_killed_at_a_random_moment_resumes_bitwise(tmp_path: Path) -> None:
    want = _run("--out", str(tmp_path / "uninterrupted.json"))
    assert want.returncode == 0, want.stderr[-3000:]

    ckpt, out = tmp_path / "demo.ckpt.npz", tmp_path / "resumed.json"
    cmd = [*CMD, *ARGS, "--checkpoint", str(ckpt), "--checkpoint-every", str(EVERY), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    delay = np.random.default_rng(20230425).uniform(0.0, 0.4)  # random, but the same on every run
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and not ckpt.exists() and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill: {proc.returncode}\n{err[-2000:]!r}"
    assert not out.exists()
    saved = persist.load_checkpoint(ckpt)["step"]  # atomic writes: the last complete checkpoint
    assert 0 < saved < STEPS and saved % EVERY == 0

    got = _run("--checkpoint", str(ckpt), "--checkpoint-every", str(EVERY), "--resume", "--out", str(out))
    assert got.returncode == 0, got.stderr[-3000:]
    assert f"demo: resumed from {ckpt} at step {saved}" in got.stdout.splitlines()
    # Progress lines after the resume point are those of the uninterrupted run (elapsed aside).
    tail = [ELAPSED.sub("", line) for line in want.stdout.splitlines()
            if line.startswith("step ") and int(line.split()[1]) > saved]  # fmt: skip
    assert [ELAPSED.sub("", line) for line in got.stdout.splitlines() if line.startswith("step ")] == tail
    assert _final_line(got.stdout) == _final_line(want.stdout)
    assert out.read_bytes() == (tmp_path / "uninterrupted.json").read_bytes()


@pytest.fixture(scope="module")
def a_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a valid demo checkpoint (step 20 of a 40-step run)."""
    ckpt = tmp_path_factory.mktemp("demo_ckpt") / "c.npz"
    proc = _run("--steps", "40", "--checkpoint", str(ckpt), "--checkpoint-every", "20", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ckpt.read_bytes()


@pytest.mark.parametrize("how", ["truncated", "flipped byte", "garbage"])
def test_resume_from_a_damaged_checkpoint_exits_2_naming_the_file(tmp_path: Path, a_checkpoint: bytes,
                                                                   how: str) -> None:
    data = bytearray(a_checkpoint)
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "flipped byte":
        data[len(data) // 3] ^= 0x40
    else:
        data = bytearray(b"not a checkpoint\n" * 10)
    ckpt, out = tmp_path / "damaged.npz", tmp_path / "out.json"
    ckpt.write_bytes(bytes(data))
    proc = _run("--steps", "40", "--checkpoint", str(ckpt), "--resume", "--out", str(out))
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {ckpt}: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert ckpt.read_bytes() == bytes(data) and not out.exists()  # nothing overwritten or written


def test_resume_with_other_options_exits_2_naming_the_file(tmp_path: Path, a_checkpoint: bytes) -> None:
    ckpt = tmp_path / "c.npz"
    ckpt.write_bytes(a_checkpoint)
    proc = _run("--steps", "40", "--lr", "0.01", "--checkpoint", str(ckpt), "--resume")
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert proc.stderr.startswith(f"error: {ckpt}: checkpoint of a demo with options") and "delete it" in proc.stderr
    assert ckpt.read_bytes() == a_checkpoint


def test_resume_without_a_checkpoint_path_is_rejected(tmp_path: Path) -> None:
    proc = _run("--steps", "40", "--resume")
    assert proc.returncode == 2 and "--resume: expected --checkpoint PATH" in proc.stderr, proc.stderr[-3000:]
