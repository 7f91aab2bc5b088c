"""The data benchmark's file: a generated MiniMind-like JSONL, slices of it, its page-cache state.

``generate`` streams a seeded synthetic corpus (not real language; only its shape matters) to
disk in large chunks; ``drop_from_page_cache`` and ``resident_fraction`` (``mincore``) make and
check the cold runs without root; ``remove_caches`` deletes the index and token caches the
datasets would reuse. Used by ``data.py`` and its tests.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import random
import time
from typing import Any, Dict, List, Optional

import numpy as np

MB = 2**20


# ============================================================================ generation

_ZH_SUBJ = ["我们", "研究人员", "这个模型", "老师", "学生们", "城市", "公司", "科学家", "小明", "历史学家",
            "人工智能", "这本书", "他的朋友", "政府", "工程师", "孩子们", "医生", "农民", "作者", "读者"]
_ZH_VERB = ["认为", "发现", "提出了", "讨论了", "改变了", "需要", "研究了", "解释了", "描述了", "创造了",
            "学习", "分析了", "总结了", "比较了", "推动了", "理解", "记录了", "设计了"]
_ZH_OBJ = ["一个新的方法", "语言的结构", "经济的发展", "自然界的规律", "传统文化", "数据的质量", "教育的意义",
           "宇宙的起源", "社会的变化", "计算机程序", "健康的生活方式", "长江流域的气候", "古代诗歌", "数学问题",
           "环境保护的重要性", "神经网络的训练", "城市交通", "科学实验的结果"]
_ZH_TAIL = ["这对未来有重要的影响", "因此受到了广泛关注", "但是仍然存在很多问题", "并且取得了显著的进展",
            "这是一个值得思考的问题", "同时也带来了新的挑战", "所以我们需要更多的研究", "在很多领域都有应用"]
_ZH_CHARS = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说"
             "产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点"
             "从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原"
             "又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革")
_EN_SUBJ = ["The model", "A student", "The old library", "Every engineer", "The committee", "Our team",
            "The river", "A small company", "The professor", "This algorithm", "The city council", "My neighbor"]
_EN_VERB = ["describes", "improves", "explains", "changes", "measures", "builds", "studies", "questions",
            "remembers", "compares", "predicts", "summarizes"]
_EN_OBJ = ["the structure of language", "a simple proof", "the history of trade", "the weather in spring",
           "a list of numbers", "the cost of energy", "the meaning of the poem", "a new training method",
           "the shape of the network", "the results of the experiment", "an old map", "the price of rice"]
_EN_TAIL = ["in a few minutes", "with great care", "for the first time", "without any help", "every morning",
            "after a long discussion", "in the final chapter", "because it matters"]


def _zh_sentence(rng: random.Random) -> str:
    if rng.random() < 0.35:  # random common characters: the long tail of the vocabulary
        body = "".join(rng.choices(_ZH_CHARS, k=rng.randint(8, 40)))
    else:
        body = f"{rng.choice(_ZH_SUBJ)}{rng.choice(_ZH_VERB)}{rng.choice(_ZH_OBJ)}，{rng.choice(_ZH_TAIL)}"
    if rng.random() < 0.15:
        body += f"（{rng.randint(1, 2024)}年）"
    return body + rng.choice("。。。！？；")


def _en_sentence(rng: random.Random) -> str:
    s = f"{rng.choice(_EN_SUBJ)} {rng.choice(_EN_VERB)} {rng.choice(_EN_OBJ)} {rng.choice(_EN_TAIL)}"
    if rng.random() < 0.2:
        s += f", about {rng.randint(2, 999)} times"
    return s + rng.choice(".....!?") + " "


def build_corpus(seed: int, n_chars: int = 4_000_000) -> tuple[str, np.ndarray]:
    """A long string of synthetic sentences (about 65% Chinese) that needs no JSON escaping but
    ``\\n`` (written as the two-character escape, only at sentence ends), and the offsets where
    sentences start (slices are cut there, so an escape is never split)."""
    rng = random.Random(seed)
    parts: List[str] = []
    starts: List[int] = []
    pos = 0
    while pos < n_chars:
        s = _zh_sentence(rng) if rng.random() < 0.65 else _en_sentence(rng)
        if rng.random() < 0.06:
            s += "\\n"  # a paragraph break inside the JSON string
        starts.append(pos)
        parts.append(s)
        pos += len(s)
    starts.append(pos)
    return "".join(parts), np.asarray(starts, dtype=np.int64)


class _Slicer:
    """Random sentence-aligned slices of the corpus of about a wanted length (vectorised)."""

    def __init__(self, corpus: str, starts: np.ndarray, rng: np.random.Generator):
        self.corpus, self.starts, self.rng = corpus, starts, rng

    def take(self, lo: int, hi: int, n: int) -> List[str]:
        s = self.starts
        want = self.rng.integers(lo, hi + 1, size=n)
        first = self.rng.integers(0, len(s) - 1, size=n)
        a = s[first]
        # end at the first sentence start at or after a + want (at least one sentence)
        j = np.searchsorted(s, a + want, side="left")
        j = np.clip(np.maximum(j, first + 1), 0, len(s) - 1)
        b = s[j]
        c = self.corpus
        return [c[x:y] for x, y in zip(a.tolist(), b.tolist())]


def _pretrain_lines(sl: _Slicer, n: int) -> List[str]:
    return ['{"text": "' + t + '"}\n' for t in sl.take(500, 3000, n)]


def _sft_lines(sl: _Slicer, n: int, rng: np.random.Generator) -> List[str]:
    pairs = rng.integers(1, 5, size=n)
    system = rng.random(n) < 0.1
    total = int(pairs.sum())
    users = iter(sl.take(10, 150, total))
    replies = iter(sl.take(30, 500, total))
    sys_texts = iter(sl.take(10, 80, int(system.sum())))
    out = []
    for k, has_sys in zip(pairs.tolist(), system.tolist()):
        turns = []
        if has_sys:
            turns.append('{"role": "system", "content": "' + next(sys_texts) + '"}')
        for _ in range(k):
            turns.append('{"role": "user", "content": "' + next(users) + '"}')
            turns.append('{"role": "assistant", "content": "' + next(replies) + '"}')
        out.append('{"conversations": [' + ", ".join(turns) + "]}\n")
    return out


def generate(kind: str, path: str, size_bytes: int, seed: int = 1234) -> Dict[str, Any]:
    """Write about ``size_bytes`` of ``kind`` JSONL to ``path`` (chunks of ~16 MB)."""
    t0 = time.perf_counter()
    corpus, starts = build_corpus(seed)
    rng = np.random.default_rng(seed)
    sl = _Slicer(corpus, starts, rng)
    written = lines = 0
    per_chunk = 4000 if kind == "pretrain" else 8000
    with open(path, "wb") as f:
        while written < size_bytes:
            batch = _pretrain_lines(sl, per_chunk) if kind == "pretrain" else _sft_lines(sl, per_chunk, rng)
            blob = "".join(batch).encode("utf-8")
            if written + len(blob) > size_bytes:  # stop close to the size, on a line boundary
                cut = blob.rfind(b"\n", 0, size_bytes - written) + 1
                if cut == 0 and written:
                    break  # the next line would not fit
                if cut == 0:  # a size smaller than one line: that one line
                    cut = blob.index(b"\n") + 1
                lines += blob.count(b"\n", 0, cut)
                blob = blob[:cut]
            else:
                lines += len(batch)
            f.write(blob)
            written += len(blob)
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    return {"path": path, "bytes": written, "lines": lines, "seconds": dt,
            "mb_per_s": written / MB / max(dt, 1e-9), "avg_line_bytes": written / max(lines, 1)}


def take_slice(src: str, dst: str, nbytes: int) -> int:
    """The first lines of ``src`` up to about ``nbytes`` into ``dst``; returns the bytes written."""
    with open(src, "rb") as f:
        blob = f.read(nbytes)
        if len(blob) == nbytes:
            blob = blob[:blob.rfind(b"\n") + 1]
    with open(dst, "wb") as f:
        f.write(blob)
    return len(blob)


# ============================================================================ page cache

def drop_from_page_cache(path: str) -> bool:
    """fsync, then ask the kernel to drop the file's clean pages (no root needed)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            os.fsync(fd)
        except OSError:
            pass
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


_libc = None


def resident_fraction(path: str) -> Optional[float]:
    """Fraction of the file's pages in the page cache (``mincore``; None where unavailable)."""
    global _libc
    try:
        size = os.path.getsize(path)
        if size == 0:
            return 0.0
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.mmap.restype = ctypes.c_void_p
            _libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                                   ctypes.c_int, ctypes.c_long]
            _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        page = os.sysconf("SC_PAGE_SIZE")
        n_pages = (size + page - 1) // page
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = _libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED: faults nothing in
            if addr in (None, ctypes.c_void_p(-1).value):
                return None
            try:
                vec = (ctypes.c_ubyte * n_pages)()
                if _libc.mincore(addr, size, vec) != 0:
                    return None
                return float(np.frombuffer(vec, dtype=np.uint8).__and__(1).sum()) / n_pages
            finally:
                _libc.munmap(addr, size)
        finally:
            os.close(fd)
    except (OSError, AttributeError, TypeError):
        return None


def raw_read_seconds(path: str, chunk: int = 8 * MB) -> float:
    t0 = time.perf_counter()
    buf = bytearray(chunk)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return time.perf_counter() - t0


def page_cache_check(path: str) -> Dict[str, Any]:
    """Does dropping work here? Residency before/after and a cold vs warm raw read."""
    size = os.path.getsize(path)
    before = resident_fraction(path)
    dropped = drop_from_page_cache(path)
    after = resident_fraction(path)
    cold = raw_read_seconds(path)
    after_read = resident_fraction(path)
    warm = raw_read_seconds(path)
    took_effect = (after is not None and after < 0.05) if after is not None else (cold > 1.5 * warm)
    return {"fadvise_called": dropped, "resident_before": before, "resident_after_drop": after,
            "resident_after_read": after_read, "took_effect": bool(dropped and took_effect),
            "raw_read_cold_s": cold, "raw_read_warm_s": warm,
            "raw_read_cold_mb_per_s": size / MB / max(cold, 1e-9),
            "raw_read_warm_mb_per_s": size / MB / max(warm, 1e-9)}


def remove_caches(path: str, tokens: bool = True) -> List[str]:
    """Delete the index (and token) caches of ``path`` this project would use (cache_dir=None)."""
    from minimind.data.cachefile import cache_candidates

    gone = []
    for cand in cache_candidates(os.path.abspath(path), None):
        pats = [cand] + ([cand[:-len(".idx")] + ".tok-*.idx"] if tokens else [])
        for pat in pats:
            for p in glob.glob(pat):
                os.unlink(p)
                gone.append(p)
    return gone
