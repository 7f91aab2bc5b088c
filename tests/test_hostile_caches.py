"""Caches are verified, never trusted: a damaged or stale line index or token cache is rebuilt
with a warning naming the cache file, and a cache's fault is never blamed on the data file."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from minimind.data import DataError, JsonlIndex, SFTDataset
from minimind.data import index as index_mod
from minimind.data.cachefile import read_header


def write_sft(path, n=3000, seed=0):
    """SFT lines of varied length; big enough (about 300 KB) that the middle of the file lies
    outside the 64 KiB head and tail that the file signature hashes."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            reply = "word " * int(rng.integers(1, 30))
            f.write(json.dumps({"conversations": [{"role": "user", "content": f"q{i}"},
                                                  {"role": "assistant", "content": reply}]}) + "\n")
    return str(path)


def swap_two_middle_lines(path):
    """Change the file in place so that size, head, tail and mtime stay the same (what the
    signature sees) but two lines of different lengths trade places."""
    st = os.stat(path)
    lines = open(path, "rb").read().split(b"\n")
    mid = len(lines) // 2
    k = next(k for k in range(mid, len(lines) - 1) if len(lines[k]) != len(lines[k + 1]))
    lines[k], lines[k + 1] = lines[k + 1], lines[k]
    with open(path, "wb") as f:
        f.write(b"\n".join(lines))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return k + 1  # the 1-based line number of the first swapped line


def corrupt_table(cache_path, entry=5, delta=3):
    header, offset = read_header(cache_path)
    table = np.memmap(cache_path, dtype=np.int64, mode="r+", offset=offset, shape=(3, header["n"]))
    table[0, entry] += delta  # a start that no longer lands on a line start
    table.flush()
    del table


def test_a_damaged_index_body_is_rebuilt_with_a_warning(tmp_path, caplog):
    path = write_sft(tmp_path / "d.jsonl")
    first = JsonlIndex(path)
    expected = [first.line(i) for i in (0, 5, 2999)]
    corrupt_table(first.cache_path)
    with caplog.at_level(logging.WARNING):
        again = JsonlIndex(path)
    assert not again.cache_hit, "a damaged index was trusted"
    assert first.cache_path in caplog.text and "rebuilding" in caplog.text
    assert [again.line(i) for i in (0, 5, 2999)] == expected
    assert JsonlIndex(path).cache_hit  # the rebuilt one is good


def test_a_stale_index_of_a_file_changed_in_place_is_rebuilt(tmp_path, caplog):
    path = write_sft(tmp_path / "d.jsonl")
    assert not SFTDataset(path, None, max_length=64).index.cache_hit  # built and cached
    swap_two_middle_lines(path)
    with caplog.at_level(logging.WARNING):
        ds = SFTDataset(path, None, max_length=64)
    assert not ds.index.cache_hit and "rebuilding" in caplog.text
    naive = open(path, "rb").read().split(b"\n")
    assert all(ds.index.line(i) == naive[i] for i in range(len(ds)))
    for i in range(len(ds)):
        ds[i]


def test_a_cache_fault_found_while_reading_names_the_cache_not_the_data(tmp_path, monkeypatch):
    """With only a few entries checked at load (a large file), a stale entry found later is
    reported as the cache's fault."""
    path = write_sft(tmp_path / "d.jsonl")
    idx = SFTDataset(path, None, max_length=64).index
    line = swap_two_middle_lines(path)
    monkeypatch.setattr(index_mod, "_CHECK_ALL_BELOW", 0, raising=False)
    monkeypatch.setattr(index_mod, "_SPOT_CHECKS", 2, raising=False)  # first and last entry only
    ds = SFTDataset(path, None, max_length=64)
    assert ds.index.cache_hit
    with pytest.raises(DataError) as e:
        for i in range(line - 2, line + 2):
            ds[i]
    msg = str(e.value)
    assert idx.cache_path in msg and "does not match" in msg, msg
    assert "delete" in msg and f"{path}, line" not in msg, msg


def test_a_damaged_token_cache_is_rebuilt_with_a_warning(tmp_path, caplog):
    path = write_sft(tmp_path / "d.jsonl", n=400)
    lazy = SFTDataset(path, None, max_length=64)
    expected = [tuple(t.tolist() for t in lazy[i]) for i in range(len(lazy))]
    ds = SFTDataset(path, None, max_length=64, pretokenize=True)
    cache = ds._tokens.path
    header, _ = read_header(cache)
    offsets = np.memmap(cache, dtype=np.int64, mode="r+", offset=header["offsets_at"], shape=(header["n"] + 1,))
    offsets[10] += 1  # sample 9 and 10 now have the wrong tokens
    offsets.flush()
    del offsets, ds
    with caplog.at_level(logging.WARNING):
        again = SFTDataset(path, None, max_length=64, pretokenize=True)
    assert cache in caplog.text and "rebuilding" in caplog.text
    assert [tuple(t.tolist() for t in again[i]) for i in range(len(again))] == expected


def test_a_truncated_token_cache_is_rebuilt_with_a_warning(tmp_path, caplog):
    path = write_sft(tmp_path / "d.jsonl", n=400)
    ds = SFTDataset(path, None, max_length=64, pretokenize=True)
    cache = ds._tokens.path
    size = os.path.getsize(cache)
    del ds
    with open(cache, "r+b") as f:
        f.truncate(size - 100)
    with caplog.at_level(logging.WARNING):
        again = SFTDataset(path, None, max_length=64, pretokenize=True)
    assert cache in caplog.text and "rebuilding" in caplog.text
    assert again._tokens.path == cache and os.path.getsize(cache) == size
