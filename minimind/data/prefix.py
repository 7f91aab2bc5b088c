"""Prefix tokenization: the ids of the first ``limit + 1`` tokens of a text, exactly, without
tokenizing the rest of it.

:func:`encode_prefix_batch` gives ``[encode(t)[:limit + 1] for t in texts]``, but each text is
tokenized only up to a little past the ``limit + 1``-th token: a dataset that keeps
``max_length`` tokens of a text (and needs one more to know it was truncated) does not pay for
the rest of it. It works on any encoder function and a *plan* (:func:`prefix_plan`: whether,
and where, the tokenizer's texts may be cut); :meth:`minimind.data.tokenizer.Tokenizer.encode_prefix_batch`
is the call the datasets use.

How: each text is cut at a *safe cut* ``c`` (below) near where ``limit + 1`` tokens are
expected to end (a running estimate of characters per token), ``text[:c]`` is encoded;
while a text has fewer than ``limit + 1`` ids, the next piece ``text[c:c2]``, again
ending at a safe cut (or at the end of the text), is encoded and its ids appended. All
texts of a round go through one ``encode_batch_fast`` call.

Why it is exact. Encoding runs, in order: (1) added-token extraction (``<|im_start|>``,
``<think>``...: the text is split around their occurrences, each becomes its id); (2) the
normalizer; (3) the pre-tokenizer, here ByteLevel with GPT-2's regex
``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``,
matched left to right over each piece between added tokens, every match one
pre-token; (4) the BPE model, applied to each pre-token on its own (its result depends
only on that pre-token's bytes); (5) the post-processor. A cut at ``c`` cannot change
the ids before it, and a piece starting at ``c`` gets the same ids as the full text
there, when:

* (3) ``c`` is a pre-token boundary of the full text and of every piece: ``text[c-1]`` is a
  letter ``[A-Za-z]`` or CJK ideograph U+4E00-U+9FA5 and ``text[c]`` is not a letter (an
  ASCII digit, ASCII space/tab/newline/CR, ASCII punctuation but ``'``, or one of a
  fixed set of CJK punctuation marks), or ``text[c-1]`` is an ASCII digit and ``text[c]``
  is not a digit (such a letter, space or punctuation). The only regex alternatives
  that can cover ``text[c-1]`` are then ``\\p{L}+`` (or a contraction ending in that
  letter) resp. ``\\p{N}+``, and their greedy match stops at ``c`` whatever follows, in the
  text as in the prefix (where ``c`` is the end). The regex has no look-behind, so the
  matching of what follows ``c`` starts at ``c`` as it would in a piece starting there;
  its one look-ahead (``(?!\\S)``) is only reached through whitespace, and ``text[c-1]``
  is never whitespace. Earlier matches end before ``c`` and see the same characters. The
  classes are fixed code-point ranges, so no Unicode-version difference between
  Python's ``re`` and the Rust regex engine can move a boundary.
* (1) no added token's occurrence spans ``c``: the two characters around the cut are
  not two consecutive characters of any added token (a spanning occurrence would
  contain them). Occurrences then lie wholly before or after ``c``, and the
  left-to-right, non-overlapping matching picks the same ones in the text as in the
  prefix and the pieces.
* (2), (5) and the rest: supported only without a normalizer, with a ByteLevel
  pre-tokenizer (``use_regex=True``, ``add_prefix_space=False``: a piece starting at
  ``c`` must not get a space prepended), a BPE model without dropout, no post-processor
  (or the ByteLevel one, which adds no ids), no truncation or padding configured, and
  added tokens without ``lstrip``/``rstrip``/``single_word`` (those look at the
  characters around an occurrence). MiniMind2's and MiniMind-3's tokenizers are such.

Everything else falls back to encoding the whole text: other tokenizers (any
normalizer, another pre-tokenizer or model, a post-processor that adds ids, ...), a
text with lone surrogates (the full encode raises a TypeError on them, and so does
this), and a text with no safe cut after the estimate (the remainder is encoded whole).
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

Encode = Callable[[list], list]  # texts -> their ids, one list per text

# Code-point ranges, not Unicode classes: the same in every Python and every regex engine.
_CUT_LETTER = "A-Za-z\u4e00-\u9fa5"
_CUT_DIGIT = "0-9"
_CUT_OTHER = (" \t\n\r" + "".join(re.escape(ch) for ch in "!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~")
              + "\uff0c\u3002\uff01\uff1f\uff1b\uff1a\u3001\uff08\uff09\u300a\u300b"
              "\u201c\u201d\u2018\u2019\u3010\u3011\u2026\u2014")
# A safe cut (a position): after a letter, before a digit/space/punctuation; or after a digit,
# before a letter/space/punctuation.
_CUT = re.compile(f"(?<=[{_CUT_LETTER}])(?=[{_CUT_DIGIT}{_CUT_OTHER}])"
                  f"|(?<=[{_CUT_DIGIT}])(?=[{_CUT_LETTER}{_CUT_OTHER}])")
_CUT_WINDOW = 64


def prefix_plan(spec: dict) -> frozenset | None:
    """For a tokenizer.json dict: None unless prefix encoding is exact for it (the conditions
    above), else the set of two-character windows of its added tokens."""
    pre = spec.get("pre_tokenizer") or {}
    model = spec.get("model") or {}
    post = spec.get("post_processor")
    if (spec.get("normalizer") is not None or spec.get("truncation") is not None
            or spec.get("padding") is not None
            or pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") is not False
            or pre.get("use_regex", True) is not True
            or model.get("type") != "BPE" or model.get("dropout") not in (None, 0, 0.0)
            or (post is not None and post.get("type") != "ByteLevel")):
        return None
    pairs = set()
    for t in spec.get("added_tokens") or []:
        if t.get("lstrip") or t.get("rstrip") or t.get("single_word"):
            return None
        content = t.get("content") or ""
        pairs.update(content[j:j + 2] for j in range(len(content) - 1))
    return frozenset(pairs)


def _safe_cut(text: str, start: int, n: int, added_pairs: frozenset) -> int | None:
    """The last safe cut c with start < c <= n (looking back at most _CUT_WINDOW characters),
    else the first one after n; None if there is none."""
    last = None
    for m in _CUT.finditer(text, max(start + 1, n - _CUT_WINDOW), n + 1):
        c = m.start()
        if text[c - 1:c + 1] not in added_pairs:
            last = c
    if last is not None:
        return last
    pos = max(n + 1, start + 1)
    while True:
        m = _CUT.search(text, pos)
        if m is None:
            return None
        c = m.start()
        if text[c - 1:c + 1] not in added_pairs:
            return c
        pos = c + 1


def plan_key(backend) -> tuple:
    """What the plan of a ``tokenizers.Tokenizer`` depends on (tokens added, normalizer,
    pre-tokenizer, post-processor, truncation, padding, dropout): a few microseconds to
    compute, so a cached plan can be checked on every call."""
    b = backend
    norm, pre, post = b.normalizer, b.pre_tokenizer, b.post_processor
    return (b.get_vocab_size(with_added_tokens=True), str(b.truncation), str(b.padding),
            norm and norm.__getstate__(), pre and pre.__getstate__(), post and post.__getstate__(),
            getattr(b.model, "dropout", None))


def encode_prefix_batch(texts: Sequence[str], limit: int, plan: frozenset | None, encode_many: Encode,
                        encode_one: Callable[[str], list], cpt: float) -> tuple[list[list[int]], float]:
    """``([encode(t)[:limit + 1] for t in texts], new cpt)``, exactly, tokenizing only prefixes
    when ``plan`` (:func:`prefix_plan`) allows. ``encode_many`` encodes a list of texts (one
    batched call per round), ``encode_one`` a single text (for lone surrogates, whose error
    must be the full encoding's); ``cpt`` is the caller's running estimate of characters per
    token, returned updated."""
    limit = int(limit)
    if limit < 0:
        raise ValueError(f"limit={limit} must be >= 0")
    if plan is None:
        return [ids[:limit + 1] for ids in encode_many(list(texts))], cpt
    want = limit + 1
    out: list[list[int] | None] = [None] * len(texts)
    todo = []  # [k, text, start, ids so far]
    for k, text in enumerate(texts):
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates: the full encode raises, as before
                out[k] = encode_one(text)[:want]
                continue
        todo.append([k, text, 0, []])
    first = True
    while todo:
        pieces = []
        for item in todo:
            _, text, start, ids = item
            need = want - len(ids)
            if first:
                n = start + int(need * cpt) + 8
            else:  # this text's own characters per token so far, and a margin
                n = start + int(need * start / max(len(ids), 1) * 1.15) + 8
            c = _safe_cut(text, start, n, plan) if n < len(text) else None
            end = len(text) if c is None else c
            pieces.append(text[start:end])
            item[2] = end
        first = False
        done_chars = done_tokens = 0
        left = []
        for item, ids in zip(todo, encode_many(pieces)):
            item[3] += ids
            if len(item[3]) >= want or item[2] >= len(item[1]):
                out[item[0]] = item[3][:want]
                if len(item[3]) >= want:
                    done_chars += item[2]
                    done_tokens += len(item[3])
            else:
                left.append(item)
        if done_tokens:
            cpt = 0.8 * cpt + 0.2 * done_chars / done_tokens
        todo = left
    return out, cpt
