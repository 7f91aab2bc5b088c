"""Tokenizer loading, the chat-template renderer (transformers' semantics) and the training CLI."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest

from minimind.data import DataError, Tokenizer, load_tokenizer
from minimind.tokenizer import CHAT_TEMPLATE, chat_template, tokenizer_config, train_tokenizer

WORDS = ("the cat sat on a mat and then ran to the big red house where people live "
         "hello world answer question weather city sunny rain").split()


def _corpus(path, lines=300):
    import random

    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(lines):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(12))}) + "\n")
        f.write(json.dumps({"conversations": [{"role": "user", "content": "hello"},
                                              {"role": "assistant", "content": "zebra quokka"}]}) + "\n")
    return path


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    return train_tokenizer([str(_corpus(d / "c.jsonl"))], str(d / "tok"), vocab_size=320, show_progress=False)


def _with_template(src_dir, dst, template):
    import shutil

    dst.mkdir()
    shutil.copy(f"{src_dir}/tokenizer.json", dst / "tokenizer.json")
    cfg = tokenizer_config(template)
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    return load_tokenizer(str(dst))


# -- loading ----------------------------------------------------------------------------------
def test_demo_tokenizer_is_the_default():
    tok = load_tokenizer(None)
    assert isinstance(tok, Tokenizer)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.token_to_id("<|endoftext|>") == 0 and tok.token_to_id("<|im_start|>") == 1
    assert tok.vocab_size == 768 and len(tok) == tok.vocab_size
    text = "What is the capital of Zorvia?"
    assert tok.decode(tok.encode(text)) == text
    assert tok.path.endswith("demo/tokenizer")


def test_specials_in_text_are_parsed_and_skipped_on_decode(tok_dir):
    tok = load_tokenizer(tok_dir)
    ids = tok.encode("<|im_start|>hello<|im_end|>")
    assert ids == [1] + tok.encode("hello") + [2]
    assert tok.decode(ids) == "hello"
    assert tok.decode(ids, skip_special_tokens=False) == "<|im_start|>hello<|im_end|>"
    assert tok.encode("hello", add_special_tokens=True) == tok.encode("hello")  # no post-processor


def test_tokenizer_json_file_path_is_accepted(tok_dir):
    a, b = load_tokenizer(tok_dir), load_tokenizer(f"{tok_dir}/tokenizer.json")
    assert a.encode("the cat") == b.encode("the cat")
    assert b.chat_template == a.chat_template  # the sibling tokenizer_config.json is read


def test_missing_tokenizer_directory(tmp_path):
    with pytest.raises(DataError) as e:
        load_tokenizer(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(e.value) and "tokenizer.json" in str(e.value)


def test_directory_without_tokenizer_json(tmp_path):
    (tmp_path / "vocab.txt").write_text("x")
    with pytest.raises(DataError) as e:
        load_tokenizer(str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path) in msg and "no tokenizer.json" in msg and "vocab.txt" in msg


def test_tokenizer_without_minimind_specials(tmp_path):
    from tokenizers import Tokenizer as Backend
    from tokenizers import models

    Backend(models.BPE(vocab={"a": 0}, merges=[])).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(DataError, match="<\\|endoftext\\|>"):
        load_tokenizer(str(tmp_path))


def test_pickle_roundtrip(tok_dir):
    tok = load_tokenizer(tok_dir)
    msgs = [{"role": "user", "content": "hello"}]
    tok.apply_chat_template(msgs)  # compile the template before pickling
    copy = pickle.loads(pickle.dumps(tok))
    assert copy.encode("the big cat") == tok.encode("the big cat")
    assert copy.apply_chat_template(msgs) == tok.apply_chat_template(msgs)
    assert (copy.vocab_size, copy.pad_token_id, copy.path) == (tok.vocab_size, tok.pad_token_id, tok.path)


# -- chat templates ---------------------------------------------------------------------------
def test_default_template_is_plain_chatml(tok_dir, tmp_path):
    import shutil

    shutil.copy(f"{tok_dir}/tokenizer.json", tmp_path / "tokenizer.json")
    tok = load_tokenizer(str(tmp_path))  # no tokenizer_config.json
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert tok.apply_chat_template(msgs) == \
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    assert tok.apply_chat_template(msgs[:1], add_generation_prompt=True) == \
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_config_template_is_honoured(tok_dir, tmp_path):
    tok = _with_template(tok_dir, tmp_path / "t",
                         "{% for m in messages %}[{{ m.role }}|{{ m.content }}]{% endfor %}{{ eos_token }}")
    assert tok.apply_chat_template([{"role": "user", "content": "a"}]) == "[user|a]<|im_end|>"


def test_chat_template_jinja_file_wins(tok_dir, tmp_path):
    tok = _with_template(tok_dir, tmp_path / "t", "from config")
    (tmp_path / "t" / "chat_template.jinja").write_text("from file")
    reloaded = load_tokenizer(str(tmp_path / "t"))
    assert reloaded.apply_chat_template([{"role": "user", "content": "a"}]) == "from file"
    assert tok.apply_chat_template([{"role": "user", "content": "a"}]) == "from config"


def test_renderer_matches_transformers_semantics(tok_dir, tmp_path):
    template = (
        "{%- for m in messages %}\n"
        "    {%- if m.role == 'bad' %}{{ raise_exception('no bad roles') }}{% endif %}\n"
        "    {{- m.role }}={{ m.content | tojson }};{{ m.extra is defined }}\n"
        "{%- endfor %}\n"
        "{%- if tools %}{{ tools | tojson }}{% endif %}\n"
        "{%- generation %}[{{ bos_token }}{{ flag | default('-') }}]{% endgeneration %}\n"
    )
    tok = _with_template(tok_dir, tmp_path / "t", template)
    out = tok.apply_chat_template([{"role": "user", "content": "<a> & 'b'", "extra": None}],
                                  tools=[{"name": "f"}], flag="on")
    # tojson does not HTML-escape; None-valued keys are dropped (undefined); trim/lstrip blocks
    assert out == 'user="<a> & \'b\'";False[{"name": "f"}][<|im_start|>on]'
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError, match="no bad roles"):
        tok.apply_chat_template([{"role": "bad", "content": "x"}])
    with pytest.raises(DataError, match="empty conversation"):
        tok.apply_chat_template([])


def test_template_is_sandboxed(tok_dir, tmp_path):
    from jinja2.exceptions import SecurityError

    tok = _with_template(tok_dir, tmp_path / "t", "{{ messages.append(1) }}")
    with pytest.raises(SecurityError):
        tok.apply_chat_template([{"role": "user", "content": "x"}])


def test_minimind2_template_output(tok_dir):
    """Our template renders what MiniMind2's does (checked against upstream's template text
    with transformers when written; these strings pin it)."""
    tok = load_tokenizer(tok_dir)
    assert tok.chat_template == chat_template() and "__DEFAULT_SYSTEM__" in CHAT_TEMPLATE
    user = {"role": "user", "content": "hi"}
    assert tok.apply_chat_template([user, {"role": "assistant", "content": "yo"}]) == (
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n")
    with_system = [{"role": "system", "content": "S"}, user]
    assert tok.apply_chat_template(with_system, add_generation_prompt=True) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.apply_chat_template([user], add_generation_prompt=True, enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    tools = [{"name": "weather", "parameters": {"city": "<str>"}}]
    call = {"function": {"name": "weather", "arguments": {"city": "Lisk"}}}
    msgs = [{"role": "system", "content": "S"}, user,
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "sunny"}, {"role": "tool", "content": "warm"},
            {"role": "assistant", "content": "ok"}]
    assert tok.apply_chat_template(msgs, tools=tools) == (
        "<|im_start|>system\nS\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"name": "weather", "parameters": {"city": "<str>"}}\n</tools>\n\n'
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nhi<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "weather", "arguments": {"city": "Lisk"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n"
        "<tool_response>\nwarm\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nok<|im_end|>\n")


def test_custom_default_system(tok_dir, tmp_path):
    tok = _with_template(tok_dir, tmp_path / "t", chat_template("Be 'brief'."))
    assert tok.apply_chat_template([{"role": "user", "content": "q"}]).startswith(
        "<|im_start|>system\nBe 'brief'.<|im_end|>\n")


# -- the CLI ----------------------------------------------------------------------------------
def test_cli_trains_a_loadable_directory(tmp_path):
    corpus = _corpus(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "minimind.tokenizer", "--data", str(corpus), "--out", str(out),
                        "--vocab-size", "300", "--max-lines", "1000", "--quiet"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "vocab 300" in r.stdout
    tok = load_tokenizer(str(out))
    assert tok.vocab_size == 300 and (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == chat_template() and cfg["pad_token"] == "<|endoftext|>"
    assert [cfg["added_tokens_decoder"][str(i)]["content"] for i in range(3)] == \
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    # conversation contents are read too: their rare words are in the corpus
    assert tok.decode(tok.encode("zebra quokka")) == "zebra quokka"


def test_cli_help_and_bad_arguments(tmp_path):
    r = subprocess.run([sys.executable, "-m", "minimind.tokenizer", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--vocab-size" in r.stdout and "--max-lines" in r.stdout
    corpus = _corpus(tmp_path / "c.jsonl", lines=5)
    with pytest.raises(SystemExit, match="too small"):
        train_tokenizer([str(corpus)], str(tmp_path / "o"), vocab_size=100, show_progress=False)
    with pytest.raises(SystemExit, match="no such file"):
        train_tokenizer([str(tmp_path / "missing.jsonl")], str(tmp_path / "o"), show_progress=False)
