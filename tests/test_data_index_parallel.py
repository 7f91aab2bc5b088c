"""The index build validates byte ranges of the file in forked processes: the same index, bad
lines, line numbers and error messages as one process, whatever the ranges and chunk sizes."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

import minimind.data.index as data_index
from minimind.data import DataError, JsonlIndex, PretrainDataset
from minimind.data.pretrain import validate_pretrain
from minimind.data.sft import validate_sft

pytestmark = pytest.mark.skipif(not data_index._can_fork(), reason="needs fork")


def _messy_file(path, rng: random.Random, n: int = 600, bad_rate: float = 0.05) -> bytes:
    """Valid, invalid (JSON, schema, UTF-8), empty and whitespace-only lines, CRLF endings,
    long lines, no final newline."""
    out = []
    for i in range(n):
        r = rng.random()
        if r < bad_rate:
            out.append(rng.choice([b'{"text": 1}', b"not json", b'{"txt": "a"}', b'{"text": "\xff"}', b"[1, 2]",
                                   b'{"text": "a"']))
        elif r < bad_rate + 0.05:
            out.append(rng.choice([b"", b"   ", b"\t", b"\r"]))
        else:
            text = "x" * rng.choice([0, 5, 50, 3000]) + "中文" * rng.randint(0, 30)
            line = json.dumps({"text": text}, ensure_ascii=rng.random() < 0.5).encode()
            out.append(line + (b"\r" if rng.random() < 0.1 else b""))
    data = b"\n".join(out) + (b"\n" if rng.random() < 0.5 else b"")
    path.write_bytes(data)
    return data


def _state(idx: JsonlIndex):
    return (np.asarray(idx._table).tolist(), idx.n_lines, idx.n_bad, idx.bad_lines)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parallel_build_equals_the_serial_one(tmp_path, monkeypatch, seed):
    rng = random.Random(seed)
    path = tmp_path / "m.jsonl"
    _messy_file(path, rng, bad_rate=0.08)
    want = _state(JsonlIndex(str(path), cache_dir=str(tmp_path / "s"), validate=validate_pretrain,
                             workers=1, progress=False))
    assert want[2] > 20  # more bad lines than the examples kept: the first 20 must be the same
    for workers, range_bytes, chunk in ((2, 5000, 1 << 20), (3, 777, 512), (2, 1 << 30, 64)):
        monkeypatch.setattr(data_index, "_RANGE_BYTES", range_bytes)
        got = JsonlIndex(str(path), cache_dir=str(tmp_path / f"p{workers}-{range_bytes}-{chunk}"),
                         validate=validate_pretrain, workers=workers, chunk_size=chunk, progress=False)
        assert _state(got) == want
        assert [got.line(i) for i in range(0, len(got), 7)] == [
            path.read_bytes()[a:b] for a, b in (got.byte_range(i) for i in range(0, len(got), 7))]


@pytest.mark.parametrize("where", [0.01, 0.5, 0.99])
def test_fail_fast_reports_the_first_bad_line(tmp_path, monkeypatch, where):
    """One or two bad lines, early, in the middle or near the end: the parallel build raises
    the same message as the serial one (the first bad line in file order)."""
    rng = random.Random(4)
    rows = [json.dumps({"conversations": [{"role": "user", "content": "q" * rng.randint(1, 200)},
                                          {"role": "assistant", "content": "a"}]}) for _ in range(2000)]
    k = int(where * len(rows))
    rows[k] = json.dumps({"conversations": [{"role": "user", "content": "no reply"}]})
    rows[min(k + 700, len(rows) - 1)] = "{broken"
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as serial:
        JsonlIndex(str(path), cache_dir=str(tmp_path / "a"), validate=validate_sft, fail_fast=True,
                   workers=1, progress=False)
    assert f"line {k + 1}:" in str(serial.value) and "no assistant turn" in str(serial.value)
    monkeypatch.setattr(data_index, "_RANGE_BYTES", 4096)
    with pytest.raises(DataError) as parallel:
        JsonlIndex(str(path), cache_dir=str(tmp_path / "b"), validate=validate_sft, fail_fast=True,
                   workers=2, chunk_size=1000, progress=False)
    assert str(parallel.value) == str(serial.value)
    assert not list((tmp_path / "b").glob("*.idx"))  # nothing cached


def test_any_callable_validates_in_the_forked_workers(tmp_path, monkeypatch):
    path = tmp_path / "l.jsonl"
    path.write_text("".join(f'{{"n": {i}}}\n' for i in range(500)))
    monkeypatch.setattr(data_index, "_RANGE_BYTES", 1000)
    idx = JsonlIndex(str(path), cache_dir=str(tmp_path / "c"), workers=2, progress=False,
                     validate=lambda line: "odd" if json.loads(line)["n"] % 2 else None)
    assert len(idx) == 250 and idx.n_bad == 250 and idx.bad_lines[:2] == [(2, "odd"), (4, "odd")]


def test_auto_workers(tmp_path, monkeypatch):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"text": "abc " * 50}) + "\n" for _ in range(400)))
    size = path.stat().st_size
    idx = JsonlIndex(str(path), cache_dir=str(tmp_path / "a"), validate=validate_pretrain, progress=False)
    assert idx._workers(size) == 1  # a small file: no processes
    monkeypatch.setattr(data_index, "_RANGE_BYTES", size // 8)
    monkeypatch.setattr(data_index, "_usable_cores", lambda: 3)
    assert idx._workers(size) == 3
    assert JsonlIndex(str(path), cache_dir=str(tmp_path / "b"), progress=False)._workers(size) == 1  # no validator
    # the datasets get the same index either way
    ds = PretrainDataset(str(path), max_length=16, cache_dir=str(tmp_path / "c"))
    assert np.array_equal(np.asarray(ds.index._table), np.asarray(idx._table))
