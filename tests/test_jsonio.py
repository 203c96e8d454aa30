"""Tests of reference/jsonio.py: the one JSON writer of ``demo --out``, ``compare`` and ``bench --json``."""

from __future__ import annotations

import json
import math

import pytest

from reference.jsonio import write_json


def test_write_json_round_trips_and_creates_the_directory(tmp_path) -> None:
    path = tmp_path / "a" / "b" / "out.json"
    obj = {"z": [1, 2.5, None, True], "a": {"s": "x"}}
    write_json(path, obj)
    text = path.read_text()
    assert json.loads(text) == obj
    assert list(json.loads(text)) == ["z", "a"]  # keys in the order given
    assert text.startswith('{\n "z"')  # indented by one space


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_write_json_refuses_non_finite_numbers_and_keeps_the_old_file(tmp_path, bad: float) -> None:
    path = tmp_path / "out.json"
    write_json(path, {"ok": 1})
    with pytest.raises(ValueError, match="JSON compliant"):
        write_json(path, {"loss": bad})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left
