"""Golden vectors (reference/golden/*.npz) still match the reference (proofs/README.md section 9).

Every case of :data:`reference.golden.CASES` is recomputed and compared with
its stored file: floats to 1e-9 relative (deterministic float64, proofs/README.md
section 6), ids, counts and strings exactly. A failure means the reference's
numbers changed: if the change is intended, regenerate with
``python -m reference conformance --golden regenerate`` and say why in the
commit message; otherwise it is a regression.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from reference import golden


@pytest.mark.parametrize("name", list(golden.CASES))
def test_reference_matches_its_golden_vectors(name):
    problems = golden.compare(golden.compute(name), golden.load(name))
    assert not problems, (
        f"golden/{name}.npz: the reference's outputs changed:\n  " + "\n  ".join(problems[:20])
        + "\nIf intended: python -m reference conformance --golden regenerate"
    )


def test_golden_files_are_small_plain_arrays():
    files = sorted(p.stem for p in golden.GOLDEN_DIR.glob("*.npz"))
    assert files == sorted(golden.CASES)  # one file per case, nothing stray
    for name in files:
        path = golden.GOLDEN_DIR / f"{name}.npz"
        assert path.stat().st_size < 64_000, f"{path} should stay small"
        with np.load(path, allow_pickle=False) as f:  # raises if anything needs pickle
            assert "meta" in f.files
            assert all(f[k].dtype.kind in "fiubU" for k in f.files)


def test_regenerate_then_check_round_trips(tmp_path):
    paths = golden.regenerate(tmp_path, names=["softmax", "encoder"])
    assert [p.name for p in paths] == ["softmax.npz", "encoder.npz"]
    assert golden.check(tmp_path, names=["softmax", "encoder"]) == {"softmax": [], "encoder": []}


def test_check_reports_the_key_that_changed(tmp_path):
    for name in ("softmax", "encoder"):
        shutil.copy(golden.GOLDEN_DIR / f"{name}.npz", tmp_path / f"{name}.npz")
    stored = golden.load("softmax", tmp_path)
    stored["full_dlogits"] = stored["full_dlogits"] * (1 + 1e-7)  # 100x the tolerance
    stored["sample_ids"] = stored["sample_ids"].copy()
    stored["sample_ids"][1, 2] += 1
    golden.save("softmax", stored, tmp_path)
    result = golden.check(tmp_path, names=["softmax", "encoder"])
    assert result["encoder"] == []
    assert len(result["softmax"]) == 2
    assert result["softmax"][0].startswith("full_dlogits: at index")
    assert result["softmax"][1].startswith("sample_ids: 1 entries differ, first at (1, 2)")


def test_compare_tolerance_is_1e9_relative():
    want = {"x": np.array([1.0, -2.0, 1e-20]), "i": np.array([1, 2])}
    near = {"x": want["x"] * (1 + 1e-11), "i": want["i"].copy()}
    assert golden.compare(near, want) == []
    far = {"x": want["x"] * (1 + 1e-8), "i": want["i"].copy()}
    assert golden.compare(far, want)[0].startswith("x:")
    assert "computed but not stored" in golden.compare({**near, "y": np.zeros(1)}, want)[0]
    assert "stored but no longer computed" in golden.compare({"x": near["x"]}, want)[0]


def test_missing_file_and_unknown_case_are_clear_errors(tmp_path):
    assert "does not exist" in golden.check(tmp_path, names=["data"])["data"][0]
    with pytest.raises(ValueError, match="unknown"):
        golden.check(tmp_path, names=["nope"])
    with pytest.raises(ValueError, match="object arrays"):
        golden.save("x", {"a": np.array([None])}, tmp_path)


def test_cli_golden_check(capsys):
    from reference import cli

    assert cli.main(["conformance", "--golden", "check"]) == 0
    out = capsys.readouterr().out
    assert f"RESULT: PASS: {len(golden.CASES)} of {len(golden.CASES)} golden files match" in out
