"""Crash and resume for real: ``python -m reference compare`` killed by SIGKILL, then ``--resume``.

What is proved here, with real processes and real signals (no mocks):

- a comparison killed with SIGKILL at random moments (seeded: after a random
  number of completed steps, so the kill lands anywhere in a step, in an
  evaluation or in a checkpoint write), resumed with ``--resume``, killed
  again and resumed again, ends with results bitwise identical to one
  uninterrupted run *without* checkpoints: every number of every run
  (losses per step, curves, gradient errors, counters, memory, the SHA-256 of
  the final parameters) and the summary; only wall-clock fields differ. The
  checkpoints are placed off the refresh and evaluation grids (every 7 steps;
  refreshes and evaluations every 20), so the restored miner state (stale
  caches, trees, the negative cache, the Nystrom index) and both random
  generators are what the resumed run actually uses;
- a damaged checkpoint (truncated, garbage, a foreign ``.npz``, another kind
  of file, a flipped byte) makes resuming stop with a ``PersistError`` naming
  the file and the problem (on the command line: exit status 2 and that
  one-line message), instead of silently starting over or continuing from
  wrong state.

(``python -m reference demo`` has no ``--resume`` option, so only ``compare``
is exercised.) The in-process resume of every miner is tested in
``tests/test_train.py``; the atomicity of checkpoint writes under SIGKILL in
``tests/test_persist.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reference import persist

REPO = Path(__file__).resolve().parents[1]
STEPS = 40
# Stateful miners (a stale cache with its tree, the Nystrom index, the FIFO negative cache) and one
# that only draws from its generator.
MINERS = ["uniform", "neg_cache", "tree_stale", "tree_nystrom"]
ARGS = ["--preset", "quick", "--miners", *MINERS, "--seeds", "0", "--steps", str(STEPS), "--quiet"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
CMD = [sys.executable, "-m", "reference", "compare"]


def _without_seconds(value):
    """Drop every wall-clock ``seconds`` field (per run, and its mean/std in the summary)."""
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_seconds(v) for v in value]
    return value


def _comparable(result: dict) -> dict:
    """A comparison's JSON without its wall-clock and invocation fields."""
    return _without_seconds({k: result[k] for k in ("config", "miners", "seeds", "runs", "summary")})


def _progress(run_dir: Path) -> int:
    """Steps completed and saved so far: finished runs x STEPS + the step of the live checkpoint."""
    done = sum((run_dir / f"{m}-seed0.json").exists() for m in MINERS)
    step = 0
    for ckpt in run_dir.glob("*.ckpt.npz"):
        try:
            step = max(step, int(persist.read_header(ckpt)["meta"]["step"]))
        except persist.PersistError:  # removed between glob and read (its run just finished)
            pass
    return done * STEPS + step


def _run_until_killed(out: Path, target: int, *, resume: bool) -> int:
    """Start ``compare``; SIGKILL it once ``target`` steps are saved. Returns the progress at the kill."""
    cmd = [*CMD, *ARGS, "--checkpoint-every", "7", "--out", str(out), *(["--resume"] if resume else [])]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_dir = out.with_name(out.stem + "_runs")
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if run_dir.exists() and _progress(run_dir) >= target:
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill: {proc.returncode}\n{err[-2000:]!r}"
    return _progress(run_dir)


def test_compare_killed_twice_at_random_steps_resumes_bitwise(tmp_path: Path) -> None:
    reference = tmp_path / "reference.json"
    subprocess.run([*CMD, *ARGS, "--checkpoint-every", "0", "--out", str(reference)], check=True,
                   cwd=REPO, env=ENV, capture_output=True, timeout=300)

    total = STEPS * len(MINERS)
    rng = np.random.default_rng(20230425)  # the kill points are random, but the same on every run
    first, second = sorted(rng.choice(np.arange(8, total - 8), size=2, replace=False))
    out = tmp_path / "killed.json"
    at1 = _run_until_killed(out, int(first), resume=False)
    at2 = _run_until_killed(out, max(int(second), at1 + 7), resume=True)
    assert 0 < at1 < at2 < total  # both kills hit a run in progress, after a checkpoint
    assert not out.exists()
    proc = subprocess.run([*CMD, *ARGS, "--checkpoint-every", "7", "--out", str(out), "--resume"],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    want = json.loads(reference.read_text())
    got = json.loads(out.read_text())
    assert _comparable(got) == _comparable(want)
    assert [r["params_sha256"] for r in got["runs"]] == [r["params_sha256"] for r in want["runs"]]
    # A finished run removes its checkpoint; only a kill between writing a run's result and that
    # removal can leave one behind, next to the result that supersedes it.
    for left in out.with_name(out.stem + "_runs").glob("*.ckpt.npz"):
        assert left.with_name(left.name.replace(".ckpt.npz", ".json")).exists(), left


def _make_bad(path: Path, how: str, good: bytes) -> None:
    if how == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif how == "garbage":
        path.write_bytes(b"\x00not a checkpoint\x00" * 10)
    elif how == "foreign":
        np.savez(path, **{"param.query.W0": np.zeros((3, 3))})  # a plain .npz: no header
    elif how == "wrong_kind":
        persist.save_arrays(path, "tree", {"points": np.zeros((3, 2))})
    elif how == "flipped":  # one byte of array data: the member's CRC-32 no longer matches
        raw = bytearray(good)
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))


SMALL = dict(n_targets=120, dim=6, queries_per_target=2, hidden=(8,), out_dim=6, steps=9, batch_size=8,
             negatives=4, refresh_every=4, cache_size=30, landmarks=8, eval_every=4)


@pytest.fixture(scope="module")
def a_checkpoint(tmp_path_factory) -> bytes:
    """The bytes of a genuine checkpoint (step 7 of a 9-step run; ``train`` leaves it in place)."""
    from reference import train

    ckpt = tmp_path_factory.mktemp("ckpt") / "run.ckpt.npz"
    train.train(train.TrainConfig(**SMALL), "tree_nystrom", checkpoint=ckpt, checkpoint_every=7)
    assert persist.load_arrays(ckpt, "checkpoint")[1]["step"] == 7
    return ckpt.read_bytes()


@pytest.mark.parametrize("how, error, problem", [
    ("truncated", persist.CorruptFileError, "not a readable .npz/zip archive"),
    ("garbage", persist.CorruptFileError, "not a readable .npz/zip archive"),
    ("foreign", persist.ForeignFileError, "not written by reference.persist"),
    ("wrong_kind", persist.WrongKindError, "holds a 'tree', expected a 'checkpoint'"),
    ("flipped", persist.CorruptFileError, "fails its CRC-32 check"),
])
def test_resume_from_a_damaged_checkpoint_fails_clearly(tmp_path: Path, a_checkpoint: bytes, how: str,
                                                        error: type, problem: str) -> None:
    """In process: ``train(..., resume=True)`` raises the PersistError naming the file and the problem."""
    from reference import train

    ckpt = tmp_path / "run.ckpt.npz"
    _make_bad(ckpt, how, a_checkpoint)
    before = ckpt.read_bytes()
    with pytest.raises(error) as info:
        train.train(train.TrainConfig(**SMALL), "tree_nystrom", checkpoint=ckpt, checkpoint_every=7, resume=True)
    assert str(info.value).startswith(f"{ckpt}: ") and problem in str(info.value)
    assert ckpt.read_bytes() == before  # the evidence is left alone


def test_compare_resume_from_a_damaged_checkpoint_exits_2_naming_the_file(tmp_path: Path, a_checkpoint: bytes) -> None:
    """On the command line: exit status 2 and a one-line message, no traceback, no output written."""
    out = tmp_path / "d.json"
    run_dir = tmp_path / "d_runs"
    run_dir.mkdir()
    ckpt = run_dir / f"{MINERS[0]}-seed0.ckpt.npz"
    _make_bad(ckpt, "truncated", a_checkpoint)
    proc = subprocess.run([*CMD, *ARGS, "--checkpoint-every", "7", "--out", str(out), "--resume"],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{ckpt}: not a readable .npz/zip archive" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- what --resume reuses is checked

from reference import cli  # noqa: E402
from reference import train as T  # noqa: E402

QUICK = ["--preset", "quick", "--miners", "uniform", "neg_cache", "--seeds", "0", "1", "--steps", "4",
         "--eval-every", "2", "--quiet", "--checkpoint-every", "0"]


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``python -m reference`` in process: (exit status, stdout, stderr)."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, dict]:
    """A finished quick comparison (2 miners x 2 seeds): its --out and the JSON."""
    out = tmp_path_factory.mktemp("finished") / "c.json"
    assert cli.main(["compare", *QUICK, "--out", str(out)]) == 0
    return out, json.loads(out.read_text())


def _copy_runs(finished, tmp_path: Path) -> tuple[Path, Path]:
    src, _ = finished
    out = tmp_path / "c.json"
    runs = tmp_path / "c_runs"
    runs.mkdir()
    for f in src.with_name(src.stem + "_runs").iterdir():
        (runs / f.name).write_bytes(f.read_bytes())
    return out, runs


def test_resume_reuses_intact_records_bitwise(finished, tmp_path: Path, capsys) -> None:
    out, runs = _copy_runs(finished, tmp_path)
    code, stdout, err = _cli(["compare", *QUICK, "--out", str(out), "--resume"], capsys)
    assert code == 0, err
    assert _comparable(json.loads(out.read_text())) == _comparable(finished[1])
    assert [r["seconds"] for r in json.loads(out.read_text())["runs"]] == [r["seconds"] for r in finished[1]["runs"]]


@pytest.mark.parametrize("attack, problem", [
    ("recall@1 0.0 -> 0.9", "SHA-256 checksum mismatch: the record was altered after it was written"),
    ("not JSON", "not valid UTF-8 JSON"),
    ("no checksum", "expected a JSON object with a 'sha256' checksum"),
    ("another run's record", "the record of miner 'uniform', seed 0, expected miner 'neg_cache', seed 1"),
])
def test_resume_refuses_a_tampered_or_unparseable_record_naming_it(finished, tmp_path: Path, capsys, attack: str,
                                                                   problem: str) -> None:
    """The issue's attack: an edited finished-run JSON went into the resumed table with exit 0."""
    out, runs = _copy_runs(finished, tmp_path)
    victim = runs / "neg_cache-seed1.json"
    doc = json.loads(victim.read_text())
    if attack == "recall@1 0.0 -> 0.9":
        doc["final"]["recall@1"] = 0.9
        victim.write_text(json.dumps(doc, indent=1))
    elif attack == "not JSON":
        victim.write_text(victim.read_text()[:-40])
    elif attack == "no checksum":
        del doc["sha256"]
        victim.write_text(json.dumps(doc))
    else:
        victim.write_bytes((runs / "uniform-seed0.json").read_bytes())
    code, stdout, err = _cli(["compare", *QUICK, "--out", str(out), "--resume"], capsys)
    assert code == 2
    assert err.startswith(f"error: {victim}: {problem}") and err.count("\n") == 1, err
    assert not out.exists() and stdout == ""


def _tamper_checkpoint(src: Path, dst: Path, how: str) -> None:
    """Re-save a genuine checkpoint (valid checksums) whose step disagrees with its history."""
    c = persist.load_checkpoint(src)
    hist, step = c["extra"]["history"], c["step"]
    if how in ("step 1000", "step 9 = steps", "step 0", "step 8"):
        step = {"step 1000": 1000, "step 9 = steps": 9, "step 0": 0, "step 8": 8}[how]
        c["optimizer"]["step"] = step  # Adam agrees, so only the history and the config can tell
    elif how == "truncated history":
        hist["train_loss"] = hist["train_loss"][:5]
    elif how == "evaluations dropped":
        for f in ("eval_step", "eval_rows", "eval_logits", *(f"eval_{m}" for m in T.METRICS)):
            hist[f] = hist[f][:1]
    elif how == "Adam step":
        c["optimizer"]["step"] = 3
    persist.save_checkpoint(dst, step=step, params=c["params"], optimizer=c["optimizer"], rngs=c["rngs"],
                            miner=c["miner"], extra=c["extra"], meta=c["meta"])


@pytest.mark.parametrize("how, problem", [
    ("step 1000", "step: expected a completed step in [0, 9)"),
    ("step 9 = steps", "step: expected a completed step in [0, 9)"),
    ("step 0", "history: expected 0 training losses (one per completed step), got 7"),
    ("step 8", "history: expected 8 training losses"),
    ("truncated history", "history: expected 7 training losses (one per completed step), got 5"),
    ("evaluations dropped", "history: expected eval_step = [0, 4]"),
    ("Adam step", "optimizer: expected 7 Adam steps (the checkpoint's step), got 3"),
])
def test_resume_refuses_a_checkpoint_whose_step_disagrees_with_its_history(tmp_path: Path, a_checkpoint: bytes,
                                                                           how: str, problem: str) -> None:
    """The issue's attack: such a checkpoint resumed with exit 0 (a 40-step run with 35-step parameters)."""
    src, ckpt = tmp_path / "good.ckpt.npz", tmp_path / "run.ckpt.npz"
    src.write_bytes(a_checkpoint)
    _tamper_checkpoint(src, ckpt, how)
    with pytest.raises(ValueError) as info:
        T.train(T.TrainConfig(**SMALL), "tree_nystrom", checkpoint=ckpt, checkpoint_every=7, resume=True)
    assert str(info.value).startswith(f"{ckpt}: checkpoint does not fit this run") and problem in str(info.value)
    # the genuine checkpoint resumes, and ends where an uninterrupted run does
    resumed = T.train(T.TrainConfig(**SMALL), "tree_nystrom", checkpoint=src, resume=True)
    assert resumed["params_sha256"] == T.train(T.TrainConfig(**SMALL), "tree_nystrom")["params_sha256"]


DEMO = ["demo", "--targets", "60", "--dim", "4", "--hidden", "8", "--out-dim", "4", "--steps", "12",
        "--batch-size", "8", "--eval-every", "5", "--quiet"]


@pytest.mark.parametrize("how, problem", [
    ("step 1000", "step: expected a completed step in [0, 12) (--steps), got 1000"),
    ("step 12 = steps", "step: expected a completed step in [0, 12) (--steps), got 12"),
    ("step 4", "history: expected progress rows at steps [0]"),
    ("truncated history", "history: expected progress rows at steps [0, 5]"),
    ("losses dropped", "history: expected finite values and 3 training losses since the last progress row, got 1"),
    ("Adam step", "optimizer: expected 8 Adam steps (the checkpoint's step), got 2"),
])
def test_demo_resume_refuses_a_checkpoint_whose_step_disagrees(tmp_path: Path, capsys, how: str, problem: str) -> None:
    ckpt, out = tmp_path / "d.ckpt.npz", tmp_path / "d.json"
    assert cli.main([*DEMO, "--steps", "9", "--checkpoint", str(ckpt), "--checkpoint-every", "8"]) == 0
    capsys.readouterr()
    c = persist.load_checkpoint(ckpt)  # step 8 of a 9-step run: rows at 0 and 5, 3 losses since
    assert c["step"] == 8
    step, extra = c["step"], c["extra"]
    if how.startswith("step"):
        step = {"step 1000": 1000, "step 12 = steps": 12, "step 4": 4}[how]
        c["optimizer"]["step"] = step
    elif how == "truncated history":
        extra["history"] = extra["history"][:1]
    elif how == "losses dropped":
        extra["losses"] = extra["losses"][:1]
    elif how == "Adam step":
        c["optimizer"]["step"] = 2
    persist.save_checkpoint(ckpt, step=step, params=c["params"], optimizer=c["optimizer"], rngs=c["rngs"],
                            extra=extra, meta={**c["meta"], "config": {**c["meta"]["config"], "steps": 12}})
    code, stdout, err = _cli([*DEMO, "--checkpoint", str(ckpt), "--resume", "--out", str(out)], capsys)
    assert code == 2 and err.startswith(f"error: {ckpt}: checkpoint does not fit this demo") and problem in err, err
    assert err.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize("member, problem", [
    ("index.nmap.inv_sqrt", "NystromMap: inv_sqrt: expected K_LL^(+1/2)"),
    ("index.W0", "W0: expected K_LL^{-1/2} g_0(L)"),
])
def test_resume_refuses_a_miner_index_that_violates_its_invariants(tmp_path: Path, a_checkpoint: bytes, member: str,
                                                                   problem: str) -> None:
    """The miner's restored index is checked like a loaded one: a scaled K_LL^{-1/2} or W_0, re-saved with valid
    checksums, passed the miner's own shape and tree checks before."""
    src, ckpt = tmp_path / "good.ckpt.npz", tmp_path / "run.ckpt.npz"
    src.write_bytes(a_checkpoint)
    c = persist.load_checkpoint(src)
    c["miner"][member] = c["miner"][member] * 5.66
    persist.save_checkpoint(ckpt, step=c["step"], params=c["params"], optimizer=c["optimizer"], rngs=c["rngs"],
                            miner=c["miner"], extra=c["extra"], meta=c["meta"])
    with pytest.raises(ValueError) as info:
        T.train(T.TrainConfig(**SMALL), "tree_nystrom", checkpoint=ckpt, resume=True)
    assert str(info.value).startswith(f"{ckpt}: checkpoint does not fit this run (InvariantError: DynamicIndex: ")
    assert problem in str(info.value)
