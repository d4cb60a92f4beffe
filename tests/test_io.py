"""Atomic writes: a failure while writing leaves the previous file intact and no temporary behind."""

from __future__ import annotations

import json
import math

import pytest

from qgen.io import atomic_open, read_json, write_json


def test_failed_write_keeps_the_old_file(tmp_path) -> None:
    target = tmp_path / "metrics.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write('{"a": ')
        raise RuntimeError("killed mid-write")
    assert read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_json_is_strict_and_sorted(tmp_path) -> None:
    write_json(tmp_path / "m.json", {"b": math.nan, "a": [1.5, math.inf]})
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text) == {"a": [1.5, None], "b": None}
    assert text.index('"a"') < text.index('"b"')
