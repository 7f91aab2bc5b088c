"""The datasets tokenize only the part of a text they keep (``Tokenizer.encode_prefix_batch``)
and build items in batches (``__getitems__``): checked to give exactly the items of encoding the
whole text, on seeded random texts (Chinese, emoji, runs of whitespace, special tokens and
pieces of them inside the text, texts that end right at the kept length), for both datasets,
both ``add_bos_eos`` modes, lazy and pretokenized, several max_lengths. Also: the fallbacks
to full encoding, the numpy labels, and progress output off a terminal."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch

from minimind.data import PretrainDataset, SFTDataset, load_tokenizer
from minimind.data.labels import assistant_label_rows, assistant_labels
from minimind.data.sft import SYSTEM_PROMPTS
from minimind.tokenizer import tokenizer_config, train_tokenizer

# Pieces the random texts are made of: specials whole and cut, ChatML markers, contractions,
# whitespace runs, CJK and CJK punctuation, emoji (with modifiers), combining marks, other
# scripts and digits, characters near the cut classes' edges (U+9FA5/U+9FA6, U+3000, NBSP).
PIECES = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_", "|>", "<|", "im_end", "<think>", "</think>",
          "<tool_call>", "<think", "think>", "assistant\n", "<|im_start|>assistant\n", "<|im_end|>\n",
          " ", "   ", "\n", "\n\n", "\r\n", "\t", " \n ", "\u3000", "\u00a0", "\u200b", "\ufeff",
          "'s", "'t", "'re", "'ll", "don't", "'", "’", "“", "”",
          "the", "Hello", "world", "cat", "x", "Z", "a_b", "__", "ab12cd", "CamelCase",
          "0", "123", "4.5", "1,000", "١٢٣", "Ⅻ", "²", "½",
          "你好世界", "中", "文", "龥", "\u9fa6", "\u9fff", "〇", "，", "。", "？！", "；", "：", "、", "（", "）",
          "【", "】", "《", "》", "—", "…", "...", "-", "!", "?", ".", ",", "<", ">", "|", "{", "}", "\\", "\"",
          "😀", "👍🏽", "🇨🇳", "e\u0301", "Ω≈ç", "ß", "İ", "ǅ", "ﬁ", "Ａ", "１", "ｱ", "한국어", "русский", "العربية"]


def random_text(rng: random.Random, max_pieces: int = 300) -> str:
    mode = rng.random()
    if mode < 0.6:
        return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, max_pieces)))
    if mode < 0.8:  # random code points from a few ranges
        ranges = [(32, 126), (0x4E00, 0x9FFF), (0xA0, 0x2FFF), (0x3000, 0x30FF), (0x1F300, 0x1F6FF)]
        return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(0, 2 * max_pieces)))
    # few distinct pieces: long runs without a safe cut, or with one at every other character
    alphabet = rng.sample(["ab", "12", " ", ".", "中", "\n", "<|im_end|>", "😀", "  ", "，"], 3)
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, max_pieces)))


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    """The embedded demo tokenizer (vocab 768); a larger BPE trained on the pieces (more merges,
    so a wrong cut would show); the same plus MiniMind-3's non-special added tokens."""
    root = tmp_path_factory.mktemp("prefix-toks")
    rng = random.Random(1)
    corpus = root / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for _ in range(3000):
            f.write(json.dumps({"text": random_text(rng, 60)}, ensure_ascii=False) + "\n")
    big = train_tokenizer([str(corpus)], str(root / "big"), vocab_size=3000, show_progress=False)
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as Backend

    backend = Backend.from_file(f"{big}/tokenizer.json")
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t in ("<think>", "</think>", "<tool_call>", "</tool_call>")])
    (root / "m3").mkdir()
    backend.save(str(root / "m3" / "tokenizer.json"))
    from test_data import M3_TEMPLATE  # think blocks, tools: MiniMind-3's layout

    with open(root / "m3" / "tokenizer_config.json", "w") as f:
        json.dump(tokenizer_config(M3_TEMPLATE), f)
    return {"demo": load_tokenizer(None), "big": load_tokenizer(big), "m3": load_tokenizer(str(root / "m3"))}


# -- the tokenizer ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["demo", "big", "m3"])
def test_encode_prefix_is_the_full_encoding_cut(toks, name):
    """A few thousand seeded random texts and limits, both add_special_tokens settings, plus each
    text cut right where its (limit)th, (limit+1)th and (limit+2)th tokens end."""
    tok = toks[name]
    assert tok._prefix_plan() is not None  # the fast path is taken for these tokenizers
    rng = random.Random({"demo": 0, "big": 1, "m3": 2}[name])
    cases = 0
    for trial in range(1000):
        text = random_text(rng)
        limit = rng.choice([0, 1, 2, 3, 7, 16, 63, 64, 200, 338, 340, 511, 512])
        special = trial % 2 == 1
        enc = tok.backend.encode(text, add_special_tokens=special)
        texts = [text]
        for k in (limit - 1, limit, limit + 1):  # texts that end right at the boundary
            if 0 <= k < len(enc.ids):
                end = enc.offsets[k][1]
                texts += [text[:end], text[:end + 1]]
        for t in texts:
            want = tok.encode(t, add_special_tokens=special)[:limit + 1]
            assert tok.encode_prefix(t, limit, special) == want, (name, trial, limit, t)
            cases += 1
        # the batched form, texts of every length together
        batch = texts + [text[::-1], ""]
        assert tok.encode_prefix_batch(batch, limit, special) == \
            [tok.encode(t, add_special_tokens=special)[:limit + 1] for t in batch]
    assert cases > 3000


def test_encode_prefix_really_cuts(toks, monkeypatch):
    """On long texts only a prefix is tokenized (the whole point)."""
    tok = toks["demo"]
    seen = []
    real = tok._encode_many
    monkeypatch.setattr(tok, "_encode_many", lambda texts, special: seen.extend(texts) or real(texts, special))
    text = "The cat sat on the mat, 你好世界。" * 500
    assert tok.encode_prefix(text, 100) == tok.encode(text)[:101]
    assert 0 < sum(map(len, seen)) < len(text) / 10


def test_lone_surrogates_raise_as_the_full_encoding_does(toks):
    tok = toks["demo"]
    text = "abc, def. " * 200 + "\ud800"
    with pytest.raises(TypeError) as full:
        tok.encode(text)
    with pytest.raises(TypeError) as prefix:
        tok.encode_prefix(text, 5)
    assert str(full.value) == str(prefix.value)


def _variant(tok, edit):
    from tokenizers import Tokenizer as Backend

    from minimind.data.tokenizer import Tokenizer

    spec = json.loads(tok.backend.to_str())
    edit(spec)
    return Tokenizer(Backend.from_str(json.dumps(spec)), tok.config, path=tok.path)


FALLBACKS = {
    "normalizer": lambda s: s.update(normalizer={"type": "NFKC"}),
    "prefix space": lambda s: s["pre_tokenizer"].update(add_prefix_space=True),
    "no regex": lambda s: s["pre_tokenizer"].update(use_regex=False),
    "other pre-tokenizer": lambda s: s.update(pre_tokenizer={"type": "Whitespace"}),
    "post-processor": lambda s: s.update(post_processor={
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "<|im_end|>", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]},
                           "<|im_end|>": {"id": "<|im_end|>", "ids": [2], "tokens": ["<|im_end|>"]}}}),
    "rstrip token": lambda s: s["added_tokens"][2].update(rstrip=True),
    "lstrip token": lambda s: s["added_tokens"][1].update(lstrip=True),
    "single-word token": lambda s: s["added_tokens"][0].update(single_word=True),
    "dropout": lambda s: s["model"].update(dropout=0.5),
}


@pytest.mark.parametrize("what", sorted(FALLBACKS))
def test_other_tokenizers_fall_back_to_the_full_encoding(toks, what):
    tok = _variant(toks["demo"], FALLBACKS[what])
    assert tok._prefix_plan() is None
    if what == "dropout":
        return  # not deterministic: nothing to compare
    rng = random.Random(3)
    for trial in range(100):
        text = random_text(rng)
        limit = rng.choice([0, 5, 64, 340])
        for special in (False, True):
            assert tok.encode_prefix(text, limit, special) == tok.encode(text, special)[:limit + 1]
    if what == "post-processor":  # the eos the post-processor appends is there when the text is short
        assert tok.encode_prefix("hi", 10, True) == tok.encode("hi", True) == [1] + tok.encode("hi") + [2]


def test_bytelevel_post_processor_keeps_the_fast_path(toks):
    tok = _variant(toks["demo"], lambda s: s.update(post_processor={
        "type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}))
    assert tok._prefix_plan() is not None
    text = "Hello world, 你好。" * 50
    assert tok.encode_prefix(text, 20, True) == tok.encode(text, True)[:21]


def test_plan_follows_added_tokens(toks):
    from tokenizers import Tokenizer as Backend

    from minimind.data.tokenizer import Tokenizer

    tok = Tokenizer(Backend.from_str(toks["demo"].backend.to_str()), toks["demo"].config)
    assert "ok" not in tok._prefix_plan()
    tok.backend.add_tokens(["zok9"])  # added after the plan was made: the plan is redone
    assert "ok" in tok._prefix_plan()
    text = "zok9 zok9zok9, book9ok. " * 40
    assert tok.encode_prefix(text, 30) == tok.encode(text)[:31]
    from tokenizers import normalizers

    tok.backend.normalizer = normalizers.NFKC()  # changed in place: the fast path is left
    assert tok._prefix_plan() is None
    assert tok.encode_prefix("ﬁne ﬁsh, " * 40, 10) == tok.encode("ﬁne ﬁsh, " * 40)[:11]
    tok.backend.normalizer = None
    tok.backend.enable_truncation(5)
    assert tok._prefix_plan() is None


# -- labels --------------------------------------------------------------------------------------
def test_assistant_label_rows_match_assistant_labels():
    """Random rows over a small alphabet (markers overlapping, repeated, cut at the end), with
    values whose int64 bytes contain a marker's bytes at an unaligned offset (256, 2**40)."""
    rng = random.Random(4)
    alphabet = [0, 1, 2, 3, 4, 5, 256, 257, 512, 65536, 2**40]
    for trial in range(3000):
        start = [rng.choice([1, 2, 3, 4, 256]) for _ in range(rng.randint(1, 3))]
        end = [rng.choice([1, 2, 3, 4]) for _ in range(rng.randint(1, 3))]
        row = np.array([rng.choice(alphabet) for _ in range(rng.randint(1, 24))])
        want = assistant_labels(row.tolist(), start, end)
        assert assistant_label_rows(row[None], start, end)[0].tolist() == want, (row, start, end)
        assert assistant_label_rows(row, start, end).tolist() == want
    batch = np.array([[rng.randint(0, 5) for _ in range(30)] for _ in range(8)])
    got = assistant_label_rows(batch, [1, 2], [3])
    assert got.tolist() == [assistant_labels(r.tolist(), [1, 2], [3]) for r in batch]


# -- the datasets ------------------------------------------------------------------------------
def _reference_pretrain(tok, text, max_length, add_bos_eos):
    """What the datasets gave before: the whole text encoded, then cut."""
    tokens = tok.encode(text, add_special_tokens=not add_bos_eos)
    if add_bos_eos:
        ids = [tok.bos_token_id] + tokens[:max_length - 2] + [tok.eos_token_id]
        cut = len(tokens) > max_length - 2
    else:
        ids, cut = tokens[:max_length], len(tokens) > max_length
    ids = ids + [tok.pad_token_id] * (max_length - len(ids))
    return ids, [-100 if t == tok.pad_token_id else t for t in ids], cut


def _reference_sft(ds, i, conversations):
    tok = ds.tokenizer
    augment = ds.system_prompt_prob > 0 or ds.drop_empty_think_prob > 0
    u_sys, choice, u_think = ds._draws(i) if augment else (1.0, 0, 1.0)
    system = (SYSTEM_PROMPTS[choice] if u_sys < ds.system_prompt_prob and ds._system_ok(conversations) else None)
    prompt = ds.render(conversations, system, u_think < ds.drop_empty_think_prob)
    full = tok.encode(prompt, add_special_tokens=True)
    ids = full[:ds.max_length]
    ids = ids + [tok.pad_token_id] * (ds.max_length - len(ids))
    return ids, assistant_labels(ids, ds.assistant_start, ds.assistant_end, ds.assistant_newlines), \
        len(full) > ds.max_length


def _write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return str(path)


def _pretrain_rows(rng, n):
    rows = []
    for _ in range(n):
        text = random_text(rng, 250)
        rows.append({"text": text if text.strip() else "x"})
    return rows


def _sft_rows(rng, n):
    rows = []
    for k in range(n):
        conv = []
        if rng.random() < 0.3:
            conv.append({"role": "system", "content": random_text(rng, 20)})
        for _ in range(rng.randint(1, 4)):
            conv.append({"role": "user", "content": random_text(rng, 40)})
            reply = {"role": "assistant", "content": random_text(rng, 120)}
            if rng.random() < 0.3:
                reply["reasoning_content"] = random_text(rng, 30)
            conv.append(reply)
        rows.append({"conversations": conv})
    return rows


@pytest.mark.parametrize("add_bos_eos", [True, False])
def test_pretrain_items_are_those_of_the_full_encoding(tmp_path, toks, add_bos_eos):
    rng = random.Random(5)
    path = _write(tmp_path / "p.jsonl", _pretrain_rows(rng, 250))
    tok = toks["m3"]
    texts = [json.loads(line)["text"] for line in open(path, encoding="utf-8")]
    for max_length in (2, 3, 16, 64, 340):
        for pretokenize in (False, True):
            ds = PretrainDataset(path, tok, max_length=max_length, add_bos_eos=add_bos_eos,
                                 pretokenize=pretokenize, cache_dir=str(tmp_path / "c"))
            want = [_reference_pretrain(tok, t, max_length, add_bos_eos) for t in texts]
            got = [ds[i] for i in range(len(ds))]
            for (x, y), (wx, wy, _) in zip(got, want):
                assert x.dtype == y.dtype == torch.long and x.shape == (max_length,)
                assert x.tolist() == wx and y.tolist() == wy
            assert ds.stats()["truncated"] == sum(c for _, _, c in want)
            # the batched fetch gives the same items
            idx = list(range(len(ds)))[::-1]
            for (x, y), i in zip(ds.__getitems__(idx), idx):
                assert x.tolist() == want[i][0] and y.tolist() == want[i][1]


@pytest.mark.parametrize("tok_name", ["demo", "m3"])
def test_sft_items_are_those_of_the_full_encoding(tmp_path, toks, tok_name):
    """Replies cut by truncation stay labelled to the end; markers written inside the text
    (``<|im_start|>assistant\\n`` in a user turn) are found as before; augmentation on."""
    rng = random.Random(6)
    rows = _sft_rows(rng, 150)
    path = _write(tmp_path / "s.jsonl", rows)
    tok = toks[tok_name]
    for max_length in (8, 40, 128, 512):
        for kw in ({}, {"system_prompt_prob": 0.5, "drop_empty_think_prob": 0.5}):
            for pretokenize in (False, True):
                ds = SFTDataset(path, tok, max_length=max_length, pretokenize=pretokenize,
                                cache_dir=str(tmp_path / "c"), **kw)
                want = [_reference_sft(ds, i, r["conversations"]) for i, r in enumerate(rows)]
                for i in range(len(ds)):
                    x, y = ds[i]
                    assert x.tolist() == want[i][0] and y.tolist() == want[i][1], (max_length, kw, i)
                assert ds.stats()["truncated"] == sum(c for _, _, c in want)
                idx = rng.sample(range(len(ds)), 40)
                for (x, y), i in zip(ds.__getitems__(idx), idx):
                    assert x.tolist() == want[i][0] and y.tolist() == want[i][1]
    # some replies were cut and labelled up to the end of the sequence
    ds = SFTDataset(path, tok, max_length=40)
    assert any(ds[i][1][-1].item() != -100 for i in range(len(ds)))


def test_loader_uses_the_batched_fetch_with_workers(tmp_path, toks):
    rng = random.Random(7)
    path = _write(tmp_path / "s.jsonl", _sft_rows(rng, 64))
    ds = SFTDataset(path, toks["demo"], max_length=64)
    want = [ds[i] for i in range(len(ds))]
    ds.reset_stats()
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, shuffle=False)
    got = [(x, y) for bx, by in loader for x, y in zip(bx, by)]
    assert len(got) == len(want)
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(got, want))
    assert ds.stats()["samples_seen"] == len(ds)


# -- progress output ---------------------------------------------------------------------------
def test_no_progress_bar_off_a_terminal(tmp_path, toks, monkeypatch, capsys, caplog):
    """stderr is not a terminal (a SLURM log): no tqdm, one log line at the start and one at the
    end of the index build and of the token cache build. On a terminal: the bars."""
    import minimind.data.cachefile as cachefile

    monkeypatch.setattr(cachefile, "_PROGRESS_MIN_BYTES", 0)
    path = _write(tmp_path / "p.jsonl", _pretrain_rows(random.Random(8), 50))
    with caplog.at_level(logging.INFO, logger="minimind.data"):
        PretrainDataset(path, toks["demo"], max_length=32, pretokenize=True, cache_dir=str(tmp_path / "a"))
    err = capsys.readouterr().err
    assert "indexing" not in err and "tokenizing" not in err and "it/s" not in err, err
    msgs = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("indexing ") for m in msgs) == 1 and sum(m.startswith("indexed ") for m in msgs) == 1
    assert sum("tokenizing" in m for m in msgs) == 1 and sum("tokenized in" in m for m in msgs) == 1

    caplog.clear()
    monkeypatch.setattr(cachefile, "_stderr_is_terminal", lambda: True)
    with caplog.at_level(logging.INFO, logger="minimind.data"):
        PretrainDataset(path, toks["demo"], max_length=32, pretokenize=True, cache_dir=str(tmp_path / "b"))
    err = capsys.readouterr().err
    assert "indexing p.jsonl" in err and "tokenizing p.jsonl" in err
    assert not [r for r in caplog.records if r.getMessage().startswith(("indexing", "indexed"))]
