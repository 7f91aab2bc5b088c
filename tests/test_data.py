"""Datasets and the JSONL index: exact (input_ids, labels), errors naming file and line,
caching, skip mode, deterministic augmentation, counters across DataLoader workers."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from minimind.data import DataError, JsonlIndex, PretrainDataset, SFTDataset, asset_path, load_tokenizer
from minimind.data.labels import assistant_labels
from minimind.data.sft import EMPTY_THINK, SYSTEM_PROMPTS
from minimind.tokenizer import tokenizer_config, train_tokenizer

WORDS = ("the cat sat on a mat and then ran to the big red house where people live hello world "
         "answer question reason think weather city sunny rain because").split()

# Mimics MiniMind-3's template: no default system turn; every assistant turn gets a think
# block (empty when there is no reasoning_content); tools listed in the system turn.
M3_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '<tools>' }}{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'user' or (m.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- elif m.role == 'assistant' %}"
    "{%- set r = m.reasoning_content if m.reasoning_content is string else '' %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + r.strip('\\n') + '\\n</think>\\n\\n' + m.content }}"
    "{%- for c in m.tool_calls or [] %}"
    "{{- '\\n<tool_call>\\n' }}{{- c | tojson }}{{- '\\n</tool_call>' }}{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokdirs(tmp_path_factory):
    """'m2': trained with our CLI code (MiniMind2's template, default system turn);
    'm3': same BPE plus <think>/</think>/<tool_call>/</tool_call> as added (non-special)
    tokens and the MiniMind-3-like template above."""
    root = tmp_path_factory.mktemp("toks")
    rng = random.Random(0)
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(12))}) + "\n"
                              for _ in range(300)))
    m2 = train_tokenizer([str(corpus)], str(root / "m2"), vocab_size=320, show_progress=False)
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as Backend

    (root / "m3").mkdir()
    backend = Backend.from_file(f"{m2}/tokenizer.json")
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t in ("<think>", "</think>", "<tool_call>", "</tool_call>")])
    backend.save(str(root / "m3" / "tokenizer.json"))
    (root / "m3" / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(M3_TEMPLATE)))
    return {"m2": m2, "m3": str(root / "m3")}


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False))
            f.write("\n")
    return str(path)


def conv(*pairs, system=None):
    out = [{"role": "system", "content": system}] if system else []
    for q, a in pairs:
        out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return {"conversations": out}


def expected_sft(tok, segments, max_length):
    """(ids, labels) from hand-written segments: (text, trained?) pairs. Checks first that the
    segments tokenize to the same ids as the whole text (they split at specials/newlines)."""
    ids, labels = [], []
    for text, trained in segments:
        piece = tok.encode(text)
        ids += piece
        labels += piece if trained else [-100] * len(piece)
    assert tok.encode("".join(t for t, _ in segments)) == ids
    assert len(ids) <= max_length, len(ids)
    pad = max_length - len(ids)
    return ids + [tok.pad_token_id] * pad, labels + [-100] * pad


def as_lists(item):
    return item[0].tolist(), item[1].tolist()


# -- pretrain -------------------------------------------------------------------------------
def test_pretrain_bos_eos_exact(tmp_path, tokdirs):
    tok = load_tokenizer(tokdirs["m2"])
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "the cat sat"}, {"text": "hello world " * 20}])
    ds = PretrainDataset(path, tokdirs["m2"], max_length=12)
    body = tok.encode("the cat sat")
    ids = [1] + body + [2] + [0] * (12 - len(body) - 2)
    assert as_lists(ds[0]) == (ids, [1] + body + [2] + [-100] * (12 - len(body) - 2))
    long = tok.encode("hello world " * 20)
    x, y = as_lists(ds[1])
    assert x == [1] + long[:10] + [2] and y == x  # truncated to max_length - 2, eos kept
    assert ds.stats() == {"truncated": 1, "bad_lines": 0, "samples_seen": 2}


def test_pretrain_minimind2_mode_texts_carry_specials(tmp_path, tokdirs):
    tok = load_tokenizer(tokdirs["m2"])
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "<|im_start|>the cat<|im_end|> <|endoftext|> red"}])
    x, y = as_lists(PretrainDataset(path, tokdirs["m2"], max_length=16, add_bos_eos=False)[0])
    body = [1] + tok.encode("the cat") + [2] + tok.encode(" ") + [0] + tok.encode(" red")
    assert x == body + [0] * (16 - len(body))
    # as upstream: every pad-id position gets -100, a literal <|endoftext|> in the text too
    assert y == [t if t != 0 else -100 for t in x]
    x, y = as_lists(PretrainDataset(path, tokdirs["m2"], max_length=4, add_bos_eos=False)[0])
    assert x == body[:4]


# -- SFT ------------------------------------------------------------------------------------
def test_sft_system_user_assistant_exact(tmp_path, tokdirs):
    tok = load_tokenizer(tokdirs["m2"])
    path = write_jsonl(tmp_path / "s.jsonl", [conv(("where is the cat", "on the mat"), system="be brief")])
    ds = SFTDataset(path, tokdirs["m2"], max_length=48)
    assert as_lists(ds[0]) == expected_sft(tok, [
        ("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nwhere is the cat<|im_end|>\n"
         "<|im_start|>assistant\n", False),
        ("on the mat<|im_end|>\n", True)], 48)


def test_sft_multi_turn_and_default_system_turn(tmp_path, tokdirs):
    tok = load_tokenizer(tokdirs["m2"])
    path = write_jsonl(tmp_path / "s.jsonl", [conv(("hello", "hello world"), ("the cat", "sat on a mat"))])
    ds = SFTDataset(path, tokdirs["m2"], max_length=128)
    assert as_lists(ds[0]) == expected_sft(tok, [
        ("<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"  # MiniMind2's default system turn
         "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n", False),
        ("hello world<|im_end|>\n", True),
        ("<|im_start|>user\nthe cat<|im_end|>\n<|im_start|>assistant\n", False),
        ("sat on a mat<|im_end|>\n", True)], 128)


def test_sft_reasoning_content_minimind3_like(tmp_path, tokdirs):
    tok = load_tokenizer(tokdirs["m3"])
    rows = [{"conversations": [{"role": "user", "content": "why rain"},
                               {"role": "assistant", "content": "because",
                                "reasoning_content": "think weather"}]},
            conv(("hello", "world"))]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    ds = SFTDataset(path, tokdirs["m3"], max_length=40)
    assert as_lists(ds[0]) == expected_sft(tok, [
        ("<|im_start|>user\nwhy rain<|im_end|>\n<|im_start|>assistant\n", False),
        ("<think>\nthink weather\n</think>\n\nbecause<|im_end|>\n", True)], 40)
    # no reasoning: the template writes an empty think block, which is trained on as is ...
    assert as_lists(ds[1]) == expected_sft(tok, [
        ("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n", False),
        ("<think>\n\n</think>\n\nworld<|im_end|>\n", True)], 40)
    # ... unless the augmentation drops it
    dropped = SFTDataset(path, tokdirs["m3"], max_length=40, drop_empty_think_prob=1.0)
    assert as_lists(dropped[1]) == expected_sft(tok, [
        ("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n", False),
        ("world<|im_end|>\n", True)], 40)
    assert as_lists(dropped[0]) == as_lists(ds[0])  # a non-empty think block is kept


def test_sft_tools_from_system_message(tmp_path, tokdirs):
    tok = load_tokenizer(tokdirs["m3"])
    tools = [{"name": "weather", "parameters": {"city": "string"}}]
    call = [{"name": "weather", "arguments": {"city": "red"}}]
    rows = [{"conversations": [{"role": "system", "content": "sys", "tools": json.dumps(tools)},
                               {"role": "user", "content": "rain"},
                               {"role": "assistant", "content": "", "tool_calls": json.dumps(call)}]}]
    ds = SFTDataset(write_jsonl(tmp_path / "s.jsonl", rows), tokdirs["m3"], max_length=192)
    assert as_lists(ds[0]) == expected_sft(tok, [
        ('<|im_start|>system\nsys\n\n<tools>\n{"name": "weather", "parameters": {"city": "string"}}\n</tools>'
         "<|im_end|>\n<|im_start|>user\nrain<|im_end|>\n<|im_start|>assistant\n", False),
        ('<think>\n\n</think>\n\n\n<tool_call>\n'
         '{"name": "weather", "arguments": {"city": "red"}}\n</tool_call>'
         "<|im_end|>\n", True)], 192)


def test_sft_truncation_inside_a_reply_labels_to_the_end(tmp_path, tokdirs):
    tok = load_tokenizer(tokdirs["m2"])
    path = write_jsonl(tmp_path / "s.jsonl", [conv(("hello", "the big red house " * 5))])
    full, _ = expected_sft(tok, [
        ("<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n"
         "<|im_start|>assistant\n", False), ("the big red house " * 5 + "<|im_end|>\n", True)], 200)
    prefix = len(tok.encode("<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\n"
                            "hello<|im_end|>\n<|im_start|>assistant\n"))
    n = prefix + 4
    ds = SFTDataset(path, tokdirs["m2"], max_length=n)
    x, y = as_lists(ds[0])
    assert x == full[:n] and y == [-100] * prefix + full[prefix:n]
    assert ds.stats()["truncated"] == 1


def test_generate_labels_edge_cases():
    S, E = [7, 8], [9, 5]  # "<|im_start|>assistant\n", "<|im_end|>\n"
    # two replies; a lone 7 or 9 does not open or close anything
    assert assistant_labels([1, 7, 8, 3, 9, 4, 9, 5, 7, 8, 6, 9, 5], S, E) == \
        [-100, -100, -100, 3, 9, 4, 9, 5, -100, -100, 6, 9, 5]
    # a reply closed by <|im_end|> without the newline (then padding) is labelled through the
    # end, padding included: upstream's generate_labels does the same
    assert assistant_labels([7, 8, 3, 9, 0, 0], S, E) == [-100, -100, 3, 9, 0, 0]
    assert assistant_labels([1, 2, 3], S, E) == [-100, -100, -100]
    assert assistant_labels([7, 8], S, E) == [-100, -100]


def test_custom_template_from_config_is_used(tmp_path, tokdirs):
    d = tmp_path / "tok"
    d.mkdir()
    shutil.copy(f"{tokdirs['m2']}/tokenizer.json", d / "tokenizer.json")
    (d / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": "{% for m in messages %}"
                         "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"}))
    tok = load_tokenizer(str(d))
    ds = SFTDataset(write_jsonl(tmp_path / "s.jsonl", [conv(("hello", "world"))]), str(d), max_length=32)
    assert as_lists(ds[0]) == expected_sft(tok, [
        ("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n", False),
        ("world<|im_end|>\n", True)], 32)


def test_demo_dataset_fits_and_trains_on_replies():
    ds = SFTDataset(asset_path("demo/sft.jsonl"), None, max_length=128)
    assert len(ds) == 16000 and ds.tokenizer.vocab_size == 768
    for i in range(0, 16000, 997):
        x, y = ds[i]
        assert x.shape == y.shape == (128,)
        assert (y != -100).sum() > 0 and x[-1] == ds.tokenizer.pad_token_id
    assert ds.stats()["truncated"] == 0
    pre = PretrainDataset(asset_path("demo/pretrain.jsonl"), max_length=128)
    assert len(pre) == 3000 and pre[0][0][0] == 1


# -- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [PretrainDataset, SFTDataset])
def test_missing_and_empty_files(tmp_path, tokdirs, cls):
    with pytest.raises(DataError, match="not found") as e:
        cls(str(tmp_path / "missing.jsonl"), tokdirs["m2"])
    assert str(tmp_path / "missing.jsonl") in str(e.value)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="is empty") as e:
        cls(str(tmp_path / "empty.jsonl"), tokdirs["m2"])
    assert str(tmp_path / "empty.jsonl") in str(e.value)
    (tmp_path / "blank.jsonl").write_text("\n  \n\n")
    with pytest.raises(DataError, match="only blank lines"):
        cls(str(tmp_path / "blank.jsonl"), tokdirs["m2"])


def test_missing_tokenizer_dir(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "x"}])
    with pytest.raises(DataError) as e:
        PretrainDataset(path, str(tmp_path / "no_tok"))
    assert str(tmp_path / "no_tok") in str(e.value) and "tokenizer.json" in str(e.value)


@pytest.mark.parametrize("cls,rows,line,fragment", [
    (PretrainDataset, [{"text": "a"}, "", '{"text": "b"', {"text": "c"}], 3, "not valid JSON"),
    (PretrainDataset, [{"text": "a"}, {"txt": "b"}], 2, 'missing key "text"'),
    (PretrainDataset, [{"text": 3}], 1, '"text" is a JSON number; expected a string'),
    (PretrainDataset, ["[1, 2]"], 1, "got a JSON array"),
    (SFTDataset, [conv(("a", "b")), {"conversations": [{"role": "user", "content": "a"}]}], 2,
     "no assistant turn"),
    (SFTDataset, [{"messages": []}], 1, 'missing key "conversations"'),
    (SFTDataset, [{"conversations": [{"role": "user"}, {"role": "assistant", "content": "x"}]}], 1,
     'conversations[0] (user) has no "content"'),
    (SFTDataset, [{"conversations": [{"content": "x"}]}], 1, 'has no "role"'),
    (SFTDataset, [{"conversations": [{"role": "system", "content": "s", "tools": "[oops"},
                                     {"role": "assistant", "content": "x"}]}], 1,
     '"tools" is a string but not valid JSON'),
])
def test_bad_lines_name_file_and_line(tmp_path, tokdirs, cls, rows, line, fragment):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as e:
        cls(path, tokdirs["m2"])
    msg = str(e.value)
    assert path in msg and f"line {line}:" in msg and fragment in msg, msg


def test_invalid_utf8_line(tmp_path, tokdirs):
    path = tmp_path / "u.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(DataError, match="line 2: not valid UTF-8"):
        PretrainDataset(str(path), tokdirs["m2"])


def test_bad_options(tmp_path, tokdirs):
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "x"}])
    with pytest.raises(DataError, match="on_bad_line='ignore'.*error, skip"):
        PretrainDataset(path, tokdirs["m2"], on_bad_line="ignore")
    with pytest.raises(DataError, match="max_length"):
        PretrainDataset(path, tokdirs["m2"], max_length=1)
    with pytest.raises(DataError, match="system_prompt_prob"):
        SFTDataset(path, tokdirs["m2"], system_prompt_prob=1.5)


def test_skip_mode_counts_and_reports(tmp_path, tokdirs):
    rows = [{"text": "a"}, "not json", {"text": "b"}, {"nope": 1}, "", {"text": "c"}, "{"]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    ds = PretrainDataset(path, tokdirs["m2"], on_bad_line="skip")
    assert len(ds) == 3
    assert ds.bad_lines.count == 3 and int(ds.bad_lines) == 3
    assert [n for n, _ in ds.bad_lines.first] == [2, 4, 7]
    assert "line(s) 2, 4, 7" in str(ds.bad_lines)
    assert ds.stats()["bad_lines"] == 3
    assert [ds.index.line_number(i) for i in range(3)] == [1, 3, 6]
    # error mode on the same file: the cached findings raise at once
    with pytest.raises(DataError, match="line 2:.*3 bad line"):
        PretrainDataset(path, tokdirs["m2"])


# -- the index ------------------------------------------------------------------------------
def test_index_offsets_line_numbers_and_edge_layouts(tmp_path):
    data = b'{"a":1}\r\n\n   \n{"b":2}\n\t\n{"c":3}'  # CRLF, blank/whitespace lines, no final newline
    path = tmp_path / "x.jsonl"
    path.write_bytes(data)
    for chunk in (3, 7, 1 << 20):  # lines longer than a chunk, lines across chunk edges
        idx = JsonlIndex(str(path), cache_dir=str(tmp_path / f"c{chunk}"), chunk_size=chunk, progress=False)
        assert len(idx) == 3
        assert [json.loads(idx.line(i)) for i in range(3)] == [{"a": 1}, {"b": 2}, {"c": 3}]
        assert [idx.line_number(i) for i in range(3)] == [1, 4, 6]
        assert idx.offsets.dtype.name == "int64" and idx.offsets.tolist() == [0, 14, 24]


def test_index_matches_naive_split_on_random_content(tmp_path):
    rng = random.Random(1)
    lines = [json.dumps({"text": "x" * rng.randrange(0, 300)}) if rng.random() > 0.1 else ""
             for _ in range(500)]
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines) + "\n")
    idx = JsonlIndex(str(path), chunk_size=1000, progress=False)
    want = [(n, text.encode()) for n, text in enumerate(lines, 1) if text]
    assert [(idx.line_number(i), idx.line(i)) for i in range(len(idx))] == want


def test_index_cache_hit_and_rebuild_on_change(tmp_path):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, [{"text": "a"}, {"text": "b"}])
    first = JsonlIndex(str(path), progress=False)
    assert not first.cache_hit and first.cache_path == str(path) + ".idx" and os.path.exists(first.cache_path)
    again = JsonlIndex(str(path), progress=False)
    assert again.cache_hit and len(again) == 2
    with open(path, "a") as f:
        f.write(json.dumps({"text": "c"}) + "\n")
    grown = JsonlIndex(str(path), progress=False)
    assert not grown.cache_hit and len(grown) == 3 and json.loads(grown.line(2)) == {"text": "c"}
    # same size and same mtime, different bytes: the head/tail hash catches it
    st = os.stat(path)
    path.write_text(path.read_text().replace('"a"', '"z"'))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = JsonlIndex(str(path), progress=False)
    assert not changed.cache_hit and json.loads(changed.line(0)) == {"text": "z"}
    # a different validator is a different cache
    assert not JsonlIndex(str(path), validate=lambda b: None, progress=False).cache_hit


def test_index_cache_dir_override(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}])
    idx = JsonlIndex(path, cache_dir=str(tmp_path / "cache"), progress=False)
    assert os.path.dirname(idx.cache_path) == str(tmp_path / "cache")
    assert not os.path.exists(path + ".idx")
    assert JsonlIndex(path, cache_dir=str(tmp_path / "cache"), progress=False).cache_hit


def test_index_survives_pickle(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": str(i)} for i in range(10)])
    idx = JsonlIndex(path, progress=False)
    copy = pickle.loads(pickle.dumps(idx))
    assert [copy.line(i) for i in range(10)] == [idx.line(i) for i in range(10)]


# -- augmentation, workers, counters, pretokenize -------------------------------------------
@pytest.fixture
def sft_file(tmp_path):
    rng = random.Random(3)
    rows = []
    for i in range(40):
        pairs = [(" ".join(rng.choice(WORDS) for _ in range(3)),
                  " ".join(rng.choice(WORDS) for _ in range(1 + i % 9))) for _ in range(1 + i % 2)]
        rows.append(conv(*pairs, system="sys" if i % 5 == 0 else None))
    return write_jsonl(tmp_path / "s.jsonl", rows)


def test_augmentation_is_deterministic(sft_file, tokdirs):
    kw = dict(max_length=64, system_prompt_prob=0.5, drop_empty_think_prob=0.5, seed=7)
    a, b = SFTDataset(sft_file, tokdirs["m3"], **kw), SFTDataset(sft_file, tokdirs["m3"], **kw)
    first = [as_lists(a[i]) for i in range(len(a))]
    assert first == [as_lists(b[i]) for i in reversed(range(len(b)))][::-1]  # order does not matter
    assert first == [as_lists(a[i]) for i in range(len(a))]  # nor repetition
    plain = SFTDataset(sft_file, tokdirs["m3"], max_length=64)
    changed = sum(as_lists(plain[i]) != first[i] for i in range(len(a)))
    assert 0 < changed < len(a)
    a.set_epoch(1)
    assert [as_lists(a[i]) for i in range(len(a))] != first  # a new epoch draws again
    a.set_epoch(0)
    assert [as_lists(a[i]) for i in range(len(a))] == first
    other_seed = SFTDataset(sft_file, tokdirs["m3"], **{**kw, "seed": 8})
    assert [as_lists(other_seed[i]) for i in range(len(a))] != first


def test_system_prompt_augmentation(sft_file, tokdirs):
    tok = load_tokenizer(tokdirs["m3"])
    ds = SFTDataset(sft_file, tokdirs["m3"], max_length=96, system_prompt_prob=1.0)
    for i in range(len(ds)):
        text = tok.decode(ds[i][0], skip_special_tokens=False)
        has_sys = json.loads(ds.index.line(i))["conversations"][0]["role"] == "system"
        added = [p for p in SYSTEM_PROMPTS if text.startswith(f"<|im_start|>system\n{p}<|im_end|>")]
        assert bool(added) != has_sys  # added exactly when the conversation had no system turn
    assert EMPTY_THINK == "<think>\n\n</think>\n\n"


def test_stats_and_items_with_two_workers(sft_file, tokdirs):
    kw = dict(max_length=40, system_prompt_prob=0.3, drop_empty_think_prob=0.5)
    ds = SFTDataset(sft_file, tokdirs["m3"], **kw)
    expected = [as_lists(ds[i]) for i in range(len(ds))]
    truncated = ds.stats()["truncated"]
    assert 0 < truncated < len(ds)
    ds.reset_stats()
    ds.set_epoch(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    got = []
    for x, y in loader:
        got += list(zip(x.tolist(), y.tolist()))
    assert [tuple(e) for e in expected] == got  # workers give the same samples
    assert ds.stats() == {"truncated": truncated, "bad_lines": 0, "samples_seen": len(ds)}
    # persistent workers see set_epoch (shared memory)
    ds.reset_stats()
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, persistent_workers=True)
    epoch0 = [b[0] for b in loader]
    ds.set_epoch(5)
    epoch5 = [b[0] for b in loader]
    assert any(not torch.equal(a, b) for a, b in zip(epoch0, epoch5))
    assert ds.stats()["samples_seen"] == 2 * len(ds)


@pytest.mark.parametrize("kind", ["pretrain", "sft"])
def test_pretokenize_gives_the_same_items(tmp_path, sft_file, tokdirs, kind):
    if kind == "pretrain":
        rows = [{"text": " ".join(WORDS[: 1 + i])} for i in range(len(WORDS))]
        path = write_jsonl(tmp_path / "p.jsonl", rows)
        make = lambda **kw: PretrainDataset(path, tokdirs["m2"], max_length=16, **kw)  # noqa: E731
    else:
        path = sft_file
        make = lambda **kw: SFTDataset(path, tokdirs["m3"], max_length=48, system_prompt_prob=0.4,  # noqa: E731
                                       drop_empty_think_prob=0.5, **kw)
    plain, fast = make(), make(pretokenize=True)
    assert fast._tokens is not None and fast._tokens.path.endswith(".idx")
    assert [as_lists(plain[i]) for i in range(len(plain))] == [as_lists(fast[i]) for i in range(len(fast))]
    assert plain.stats() == fast.stats()
    mtime = os.stat(fast._tokens.path).st_mtime_ns
    again = make(pretokenize=True)  # reuses the cache
    assert again._tokens.path == fast._tokens.path and os.stat(again._tokens.path).st_mtime_ns == mtime
    copy = pickle.loads(pickle.dumps(again))
    assert as_lists(copy[3]) == as_lists(plain[3])


def test_dataset_pickles(sft_file, tokdirs):
    ds = SFTDataset(sft_file, tokdirs["m3"], max_length=48)
    copy = pickle.loads(pickle.dumps(ds))
    assert all(as_lists(copy[i]) == as_lists(ds[i]) for i in range(len(ds)))


# -- assets ---------------------------------------------------------------------------------
def test_asset_path():
    p = asset_path("demo/sft.jsonl")
    assert os.path.isabs(p) and os.path.isfile(p)
    assert os.path.isdir(asset_path("demo/tokenizer"))
    with pytest.raises(DataError, match="demo/sft.jsonl"):
        asset_path("demo/nope.jsonl")


def test_asset_module_does_not_import_torch():
    code = "import sys, minimind.data.assets as a, minimind.data as d; d.asset_path('demo/sft.jsonl'); " \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- memory (slow) --------------------------------------------------------------------------
@pytest.mark.slow
def test_peak_rss_stays_bounded_on_a_large_file(tmp_path):
    """Index (with validation) a ~300 MB file and iterate a DataLoader with 2 workers over
    samples from all of it: peak RSS of the process and of its workers stays far below the file."""
    path = tmp_path / "big.jsonl"
    rng = random.Random(0)
    para = [" ".join(rng.choice(WORDS) for _ in range(200)) for _ in range(64)]
    with open(path, "w") as f:
        while f.tell() < 300 * 1024 * 1024:
            f.write("".join(json.dumps({"text": para[rng.randrange(64)]}) + "\n" for _ in range(2000)))
    script = textwrap.dedent(f"""
        import resource, torch
        from minimind.data import PretrainDataset
        ds = PretrainDataset({str(path)!r}, max_length=256, cache_dir={str(tmp_path / 'c')!r})
        g = torch.Generator().manual_seed(0)
        idx = torch.randint(len(ds), (16 * 400,), generator=g).tolist()
        loader = torch.utils.data.DataLoader(ds, batch_size=16, sampler=idx, num_workers=2)
        n = sum(x.shape[0] for x, _ in loader)
        assert n == 16 * 400
        main = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
        print(main, kids, len(ds))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    main_mb, kids_mb, n = map(int, out.stdout.split())
    print(f"peak RSS over {n} lines ({path.stat().st_size >> 20} MB): "
          f"main {main_mb} MB, workers {kids_mb} MB")
    assert n > 100_000
    assert main_mb < 600 and kids_mb < 600, (main_mb, kids_mb)
