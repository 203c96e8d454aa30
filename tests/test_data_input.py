"""Tests of a user's own data: reference.data.load_dataset and ``compare --queries/--targets/--positives``.

The loader must give the comparison exactly what the synthetic generator
gives it (a :class:`reference.data.RetrievalData`), split the queries by its
documented seeded rule, and refuse every malformed input with a ValueError
naming the argument and the file, what was expected and what came; the
command line turns that into ``error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re

import numpy as np
import pytest

from reference import cli
from reference import train as T
from reference.data import DataFiles, load_dataset

#: A short comparison at the quick preset's budget, for the synthetic data and for the same data as files.
ARGV = ["--preset", "quick", "--steps", "3", "--eval-every", "3", "--miners", "full", "brute_topk", "tree_nystrom",
        "--seeds", "0", "--quiet", "--checkpoint-every", "0"]


def parse(argv):
    parser = argparse.ArgumentParser()
    T.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def files(tmp_path):
    """The synthetic dataset of ARGV written as .npy files: all queries in one file, and the split as given."""
    d = T.make_data(T.config_from_args(parse(ARGV))[0])
    paths = {name: tmp_path / f"{name}.npy" for name in ("X", "Y", "pos", "Xtr", "ptr", "Xte", "pte")}
    arrays = {"X": np.concatenate([d.train_x, d.test_x]), "Y": d.targets,
              "pos": np.concatenate([d.train_pos, d.test_pos]).astype(np.int32),
              "Xtr": d.train_x, "ptr": d.train_pos, "Xte": d.test_x, "pte": d.test_pos}
    for name, path in paths.items():
        np.save(path, arrays[name])
    return d, paths


def test_the_seeded_split_is_the_documented_rule(files):
    """perm = default_rng(split_seed).permutation(n); the first round(f n) of perm are the test
    queries, the rest train, each in file order; the same seed gives the same split."""
    d, p = files
    X, pos = np.load(p["X"]), np.load(p["pos"])
    n = X.shape[0]
    for seed, frac in ((0, 0.2), (7, 0.35)):
        data = load_dataset(p["X"], p["Y"], p["pos"], test_fraction=frac, split_seed=seed)
        perm = np.random.default_rng(seed).permutation(n)
        test = np.sort(perm[: round(frac * n)])
        train = np.sort(perm[round(frac * n):])
        assert np.array_equal(data.test_x, X[test]) and np.array_equal(data.test_pos, pos[test])
        assert np.array_equal(data.train_x, X[train]) and np.array_equal(data.train_pos, pos[train])
        assert data.train_pos.dtype == np.int64 and data.clusters.shape == (d.n_targets, 0)
        assert data.config["n_train"] + data.config["n_test"] == n
    again = load_dataset(p["X"], p["Y"], p["pos"], test_fraction=0.35, split_seed=7)
    assert np.array_equal(again.test_x, data.test_x)
    f32 = load_dataset(X.astype(np.float32), p["Y"], pos)  # arrays work too; float32 is kept
    assert f32.train_x.dtype == np.float32 and f32.targets.dtype == np.float64
    ints = load_dataset(np.round(X * 100).astype(np.int16), p["Y"], pos)  # int features become float64
    assert ints.train_x.dtype == np.float64


def test_a_given_split_reproduces_the_synthetic_comparison_bitwise(files, tmp_path, capsys):
    """compare on the files of the synthetic dataset, with its own train/test split, is the
    synthetic comparison: the same printed table and the same numbers (the parameters' SHA-256
    included); the JSON records the files."""
    d, p = files
    own_files = ["--queries", str(p["Xtr"]), "--targets", str(p["Y"]), "--positives", str(p["ptr"]),
                 "--test-queries", str(p["Xte"]), "--test-positives", str(p["pte"])]
    assert T.run(parse([*ARGV, "--out", str(tmp_path / "s.json")])) == 0
    out_synth = capsys.readouterr().out
    assert T.run(parse([*ARGV, *own_files, "--out", str(tmp_path / "o.json")])) == 0
    out_own = capsys.readouterr().out
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("s.json", "o.json"))
    assert a["config"]["data_files"] is None
    assert b["config"]["data_files"] == dataclasses.asdict(DataFiles(*(str(p[k]) for k in
                                                                      ("Xtr", "Y", "ptr", "Xte", "pte"))))
    assert len(a["runs"]) == len(b["runs"]) == 3
    for ra, rb in zip(a["runs"], b["runs"]):
        assert ra["params_sha256"] == rb["params_sha256"] and ra["final"] == rb["final"]
        assert ra["memory"] == rb["memory"]
    assert out_synth.split("\nJSON:")[0] == out_own.split("\nJSON:")[0]
    assert "Claim 2" in out_own and "- materialised" in out_own and "- streamed" in out_own


def _save(tmp_path, name, arr):
    path = tmp_path / f"{name}.npy"
    np.save(path, arr, allow_pickle=True)
    return path


@pytest.mark.parametrize("case, arg, match", [
    ("missing file", "queries", r"expected a readable \.npy file"),
    ("pickled objects", "queries", r"expected a readable \.npy file .*no pickles"),
    ("npz archive", "targets", r"expected a \.npy file holding one array"),
    ("complex features", "targets", r"expected a real numeric dtype .*got complex128"),
    ("bool features", "queries", r"expected a real numeric dtype .*got bool"),
    ("1-D queries", "queries", r"expected a non-empty 2-D array .*got shape \(40,\)"),
    ("NaN target", "targets", r"expected finite values, got 1 NaN"),
    ("inf query", "queries", r"expected finite values"),
    ("one target", "targets", r"expected at least 2 rows, got 1"),
    ("float positives", "positives", r"expected an integer dtype \(target ids\), got float64"),
    ("short positives", "positives", r"expected shape \(40,\) .*got \(39,\)"),
    ("negative id", "positives", r"target ids, rows of the targets \(N = 20\): expected ids >= 0, got -1"),
    ("id = N", "positives", r"target ids, rows of the targets \(N = 20\): expected ids < 20, got 20"),
    ("test columns", "test_queries", r"expected 3 feature columns .*got shape \(5, 4\)"),
    ("test positives out of range", "test_positives", r"target ids, rows of the targets \(N = 20\): expected ids < 20, got 25"),
])
def test_each_malformed_input_is_refused_naming_the_file(tmp_path, case, arg, match):
    rng = np.random.default_rng(0)
    good = {"queries": rng.normal(size=(40, 3)), "targets": rng.normal(size=(20, 4)),
            "positives": rng.integers(0, 20, size=40), "test_queries": rng.normal(size=(5, 3)),
            "test_positives": rng.integers(0, 20, size=5)}
    bad = dict(good)
    if case == "pickled objects":
        bad["queries"] = np.array([object()] * 3, dtype=object)
    elif case == "complex features":
        bad["targets"] = good["targets"] + 1j
    elif case == "bool features":
        bad["queries"] = good["queries"] > 0
    elif case == "1-D queries":
        bad["queries"] = good["queries"][:, 0]
    elif case == "NaN target":
        bad["targets"] = good["targets"].copy()
        bad["targets"][3, 1] = np.nan
    elif case == "inf query":
        bad["queries"] = good["queries"].copy()
        bad["queries"][0, 0] = -np.inf
    elif case == "one target":
        bad["targets"], bad["positives"] = good["targets"][:1], np.zeros(40, dtype=np.int64)
    elif case == "float positives":
        bad["positives"] = good["positives"].astype(np.float64)
    elif case == "short positives":
        bad["positives"] = good["positives"][:39]
    elif case == "negative id":
        bad["positives"] = np.where(np.arange(40) == 7, -1, good["positives"])
    elif case == "id = N":
        bad["positives"] = np.where(np.arange(40) == 7, 20, good["positives"])
    elif case == "test columns":
        bad["test_queries"] = rng.normal(size=(5, 4))
    elif case == "test positives out of range":
        bad["test_positives"] = np.array([0, 1, 25, 3, 4])
    paths = {k: _save(tmp_path, k, v) for k, v in bad.items()}
    if case == "missing file":
        paths["queries"] = tmp_path / "nope.npy"
    elif case == "npz archive":
        paths["targets"] = tmp_path / "t.npz"
        np.savez(paths["targets"], good["targets"])
    with pytest.raises(ValueError, match=rf"^{arg} \({re.escape(str(paths[arg]))}\): {match}"):
        load_dataset(paths["queries"], paths["targets"], paths["positives"],
                     test_queries=paths["test_queries"], test_positives=paths["test_positives"])


def test_split_and_pairing_refusals(tmp_path):
    rng = np.random.default_rng(1)
    X, Y, pos = rng.normal(size=(4, 3)), rng.normal(size=(5, 3)), rng.integers(0, 5, size=4)
    with pytest.raises(ValueError, match=r"test_fraction: 0\.1 of 4 queries leaves an empty split"):
        load_dataset(X, Y, pos, test_fraction=0.1)
    with pytest.raises(ValueError, match=r"test_fraction: expected a number in \(0, 1\), got 1\.5"):
        load_dataset(X, Y, pos, test_fraction=1.5)
    with pytest.raises(ValueError, match="test_queries, test_positives: expected both or neither"):
        load_dataset(X, Y, pos, test_positives=pos)
    with pytest.raises(ValueError, match="queries: expected a path to a .npy file or a numpy array, got list"):
        load_dataset([[1.0]], Y, pos)


def test_command_line_refusals_exit_2(tmp_path, capsys):
    """Bad own-data options: ``error: ...`` on stderr and exit status 2 (reference/cli.py), before any training."""
    rng = np.random.default_rng(2)
    X, Y = _save(tmp_path, "X", rng.normal(size=(30, 3))), _save(tmp_path, "Y", rng.normal(size=(12, 3)))
    pos = _save(tmp_path, "pos", np.where(np.arange(30) == 4, 12, rng.integers(0, 12, size=30)))
    good_pos = _save(tmp_path, "gp", rng.integers(0, 12, size=30))
    out = ["--out", str(tmp_path / "c.json"), "--quiet"]
    cases = [
        (["--queries", str(X), "--targets", str(Y), "--positives", str(pos)],
         rf"error: --positives \({re.escape(str(pos))}\): target ids, rows of the targets \(N = 12\): expected ids < 12, got 12"),
        (["--queries", str(X), "--positives", str(good_pos)],
         r"error: --targets: expected --queries, --targets and --positives together"),
        (["--queries", str(X), "--targets", str(Y), "--positives", str(good_pos), "--n-targets", "50"],
         r"error: --n-targets: expected the number of rows of --targets \(12\) or nothing, got 50"),
        (["--queries", str(X), "--targets", str(Y), "--positives", str(good_pos), "--test-queries", str(X),
          "--test-positives", str(good_pos), "--test-fraction", "0.3"],
         r"error: --test-fraction, --split-seed: expected nothing with --test-queries"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            cli.main(["compare", "--preset", "quick", *argv, *out])
        assert exc.value.code == 2
        assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "c.json").exists()


def test_resume_refuses_a_checkpoint_of_other_bytes_at_the_same_paths(files, tmp_path):
    """The run's configuration carries the SHA-256 of the files' contents: resuming on the same
    files continues the run, and after the targets file is rewritten with one value changed
    (same path, shape and size) the checkpoint is refused, naming the mismatch."""
    d, p = files
    cfg = T.config_from_args(parse([*ARGV, "--queries", str(p["Xtr"]), "--targets", str(p["Y"]),
                                       "--positives", str(p["ptr"]), "--test-queries", str(p["Xte"]),
                                       "--test-positives", str(p["pte"])]))[0]
    ckpt = tmp_path / "run.ckpt.npz"
    first = T.train(cfg, "uniform", checkpoint=ckpt, checkpoint_every=1)
    again = T.train(dataclasses.replace(cfg, data_files=dataclasses.replace(cfg.data_files)), "uniform",
                    checkpoint=ckpt, resume=True)                       # same bytes: resumed at the end
    assert again["params_sha256"] == first["params_sha256"]
    Y = np.load(p["Y"])
    Y[3, 1] += 1e-3
    np.save(p["Y"], Y)
    changed = dataclasses.replace(cfg.data_files)                       # re-reads the files
    assert changed.sha256 != cfg.data_files.sha256 and changed.targets == cfg.data_files.targets
    with pytest.raises(ValueError, match=r"checkpoint of miner 'uniform' with config .*delete it or drop --resume"):
        T.train(dataclasses.replace(cfg, data_files=changed), "uniform", checkpoint=ckpt, resume=True)


def test_data_files_digest_is_of_the_contents_and_refuses_unreadable_files(files, tmp_path):
    d, p = files
    a = DataFiles(str(p["X"]), str(p["Y"]), str(p["pos"]))
    copy = {k: tmp_path / f"copy_{k}.npy" for k in ("X", "Y", "pos")}
    for k, path in copy.items():
        path.write_bytes(p[k].read_bytes())
    assert DataFiles(*(str(copy[k]) for k in ("X", "Y", "pos"))).sha256 == a.sha256   # contents, not paths
    assert DataFiles(str(p["Y"]), str(p["X"]), str(p["pos"])).sha256 != a.sha256   # roles count
    with pytest.raises(ValueError, match=r"^targets \(.*nope\.npy\): expected a readable \.npy file, got No such file"):
        DataFiles(str(p["X"]), str(tmp_path / "nope.npy"), str(p["pos"]))


def test_a_file_changed_mid_run_stops_the_run_naming_it(files, tmp_path):
    """The issue's attack: X.npy swapped during a comparison made seed 0 train on the old data and seeds
    1-2 on the new, recording only the old digest. Now each load checks the bytes it parses against the
    digest recorded at the start: the swap stops the run (ValueError naming the file, exit 2 on the
    command line) before anything trains on the new data, and after the file is put back ``--resume``
    reuses only runs of the recorded data and ends as an uninterrupted run."""
    d, p = files
    argv = [*ARGV, "--miners", "uniform", "--seeds", "0", "1", "--queries", str(p["X"]), "--targets", str(p["Y"]),
            "--positives", str(p["pos"])]
    cfg, miners, seeds = T.config_from_args(parse(argv))
    original = p["X"].read_bytes()
    X = np.load(p["X"])
    X[0, 0] += 1.0

    def swap(info):  # at the end of seed 0, another process rewrites the queries
        if info["seed"] == 0 and info["step"] == info["steps"]:
            np.save(p["X"], X)

    run_dir = tmp_path / "runs"
    with pytest.raises(ValueError) as exc:
        T.compare(cfg, miners, seeds, run_dir=run_dir, progress=swap)
    assert str(exc.value).startswith(f"queries ({p['X']}): the file changed since the run started (SHA-256 ")
    assert sorted(f.name for f in run_dir.iterdir()) == ["uniform-seed0.json"]  # seed 1 never trained
    p["X"].write_bytes(original)
    resumed = T.compare(cfg, miners, seeds, run_dir=run_dir, resume=True)
    fresh = T.compare(cfg, miners, seeds)

    def strip(v):  # every wall-clock "seconds" field
        return ({k: strip(x) for k, x in v.items() if k != "seconds"} if isinstance(v, dict)
                else [strip(x) for x in v] if isinstance(v, list) else v)

    assert strip(resumed["runs"]) == strip(fresh["runs"])


def test_the_data_is_parsed_from_the_bytes_that_were_checked(files, monkeypatch):
    """The check and the parse use one read: a file swapped between them cannot be parsed unchecked."""
    d, p = files
    f = DataFiles(str(p["Xtr"]), str(p["Y"]), str(p["ptr"]), str(p["Xte"]), str(p["pte"]))
    assert np.array_equal(f.load().train_x, d.train_x) and np.array_equal(f.load().test_pos, d.test_pos)
    import reference.data as D

    reads = []
    real = D.read_regular_file
    monkeypatch.setattr(D, "read_regular_file", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    f.load()
    assert sorted(reads) == sorted(str(p[k]) for k in ("Xtr", "Y", "ptr", "Xte", "pte"))  # each file read once


def test_on_the_command_line_a_mid_run_change_exits_2_naming_the_option(files, tmp_path, capsys, monkeypatch):
    """The same swap through ``python -m reference compare`` (in process): exit 2, one line naming --queries."""
    d, p = files
    X = np.load(p["X"])
    X[0, 0] += 1.0
    real_train = T.train

    def train_then_swap(*a, **k):  # the first run finishes, then another process rewrites the queries
        result = real_train(*a, **k)
        np.save(p["X"], X)
        return result

    monkeypatch.setattr(T, "train", train_then_swap)
    out = tmp_path / "c.json"
    argv = ["compare", *ARGV, "--miners", "uniform", "--seeds", "0", "1", "--queries", str(p["X"]), "--targets",
            str(p["Y"]), "--positives", str(p["pos"]), "--out", str(out)]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: --queries ({p['X']}): the file changed since the run started (SHA-256 "), err
    assert not out.exists()


@pytest.mark.parametrize("layout", ["C", "Fortran", "big-endian float", "big-endian int", "float32", "empty"])
def test_the_checked_parser_reads_what_numpy_load_reads(tmp_path, layout):
    """The .npy files are parsed from the bytes that were hashed (no numpy.load): the same dtype, shape and values."""
    from reference.data import load_dataset

    rng = np.random.default_rng(5)
    a = {"C": rng.normal(size=(7, 3)), "Fortran": np.asfortranarray(rng.normal(size=(7, 3))),
         "big-endian float": rng.normal(size=(7, 3)).astype(">f8"),
         "big-endian int": rng.integers(-9, 9, size=(7, 3)).astype(">i4"),
         "float32": rng.normal(size=(7, 3)).astype(np.float32), "empty": np.zeros((7, 0))}[layout]
    np.save(tmp_path / "X.npy", a)
    np.save(tmp_path / "Y.npy", rng.normal(size=(4, 2)))
    np.save(tmp_path / "pos.npy", rng.integers(0, 4, size=7))
    if layout == "empty":
        with pytest.raises(ValueError, match=r"expected a non-empty 2-D array .*got shape \(7, 0\)"):
            load_dataset(tmp_path / "X.npy", tmp_path / "Y.npy", tmp_path / "pos.npy")
        return
    got = load_dataset(tmp_path / "X.npy", tmp_path / "Y.npy", tmp_path / "pos.npy", test_fraction=0.3)
    want = load_dataset(np.load(tmp_path / "X.npy"), np.load(tmp_path / "Y.npy"), np.load(tmp_path / "pos.npy"),
                        test_fraction=0.3)
    for f in ("targets", "train_x", "train_pos", "test_x", "test_pos"):
        assert getattr(got, f).dtype == getattr(want, f).dtype
        assert getattr(got, f).tobytes() == getattr(want, f).tobytes()
