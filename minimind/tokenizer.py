"""Train a byte-level BPE tokenizer the way MiniMind does, into a directory ``load_tokenizer`` reads.

    python -m minimind.tokenizer --data corpus.jsonl --out my_tokenizer          # vocab 6400
    python -m minimind.tokenizer --data a.jsonl b.jsonl --vocab-size 1024 --max-lines 50000 --out tok

Each JSONL line gives its ``text``, or the ``content`` (and ``reasoning_content``) of each
message of its ``conversations``. Like upstream's ``trainer/train_tokenizer.py``: a BPE model
with a ByteLevel pre-tokenizer (no prefix space) and decoder, trained with the 256-byte initial
alphabet; ``<|endoftext|>`` = 0 (pad), ``<|im_start|>`` = 1 (bos), ``<|im_end|>`` = 2 (eos).
Writes ``tokenizer.json`` and a ``tokenizer_config.json`` that also loads with transformers'
``AutoTokenizer``; its chat template renders exactly what MiniMind2's does (ChatML, a default
system turn, tools and tool calls).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Iterable, Iterator

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant"

# Same output as MiniMind2's chat template (model/tokenizer_config.json): a system turn first
# (the conversation's own, or a default one; with tools, the tool list is appended to it), user
# and extra system turns as ChatML blocks, assistant turns with their tool calls as
# <tool_call> JSON, consecutive tool results grouped into one user turn.
CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' }}
    {{- 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
    {%- for tool in tools %}
        {{- '\n' }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments' }}
    {{- ' within <tool_call></tool_call> XML tags:\n<tool_call>\n' }}
    {{- '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- else %}
    {{- '<|im_start|>system\n__DEFAULT_SYSTEM__<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- set content = message.content if message.content is string else '' %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant\n' + content }}
        {%- if message.tool_calls %}
            {%- for call in message.tool_calls %}
                {%- if content or not loop.first %}
                    {{- '\n' }}
                {%- endif %}
                {%- if call.function %}
                    {%- set call = call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- call.name }}
                {{- '", "arguments": ' }}
                {%- if call.arguments is string %}
                    {{- call.arguments }}
                {%- else %}
                    {{- call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' + content + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
"""


def chat_template(default_system: str = DEFAULT_SYSTEM_PROMPT) -> str:
    """The chat template with ``default_system`` as the system turn of conversations without one."""
    escaped = default_system.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return CHAT_TEMPLATE.replace("__DEFAULT_SYSTEM__", escaped)


def tokenizer_config(template: str | None = None) -> dict:
    """tokenizer_config.json in MiniMind2's layout (loads with transformers' AutoTokenizer too)."""
    added = {str(i): {"content": tok, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True} for i, tok in enumerate(SPECIAL_TOKENS)}
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": [],
        "bos_token": "<|im_start|>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "legacy": True,
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<|endoftext|>",
        "chat_template": template if template is not None else chat_template(),
    }


def iter_texts(paths: Iterable[str], max_lines: int | None = None) -> Iterator[str]:
    """Texts of JSONL files: ``text``, or each message's ``content``/``reasoning_content``.
    ``max_lines`` counts the non-empty lines read, over all files."""
    seen = 0
    for path in paths:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                if max_lines is not None and seen >= max_lines:
                    return
                seen += 1
                try:
                    obj = json.loads(raw)
                except ValueError as e:
                    raise SystemExit(f"{path}, line {number}: not valid JSON ({e}); "
                                     'expected {"text": ...} or {"conversations": [...]} per line')
                if isinstance(obj, dict) and isinstance(obj.get("text"), str):
                    yield obj["text"]
                elif isinstance(obj, dict) and isinstance(obj.get("conversations"), list):
                    for m in obj["conversations"]:
                        if isinstance(m, dict):
                            for key in ("reasoning_content", "content"):
                                if isinstance(m.get(key), str) and m[key]:
                                    yield m[key]
                else:
                    raise SystemExit(f"{path}, line {number}: expected a \"text\" string or a "
                                     "\"conversations\" array")


def train_tokenizer(data: list[str] | str, out: str, vocab_size: int = 6400, max_lines: int | None = None,
                    default_system: str = DEFAULT_SYSTEM_PROMPT, show_progress: bool = True) -> str:
    """Train on ``data`` (JSONL paths) and write ``tokenizer.json`` + ``tokenizer_config.json``
    into ``out``; returns ``out``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    paths = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    for p in paths:
        if not os.path.isfile(p):
            raise SystemExit(f"--data {p}: no such file; expected a JSONL corpus")
    min_vocab = 256 + len(SPECIAL_TOKENS)
    if vocab_size <= min_vocab:
        raise SystemExit(f"--vocab-size {vocab_size} is too small; expected more than {min_vocab} "
                         "(256 byte tokens + 3 specials)")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  show_progress=show_progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(iter_texts(paths, max_lines), trainer=trainer)
    tok.decoder = decoders.ByteLevel()
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))

    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_config(chat_template(default_system)), f, ensure_ascii=False, indent=2)
        f.write("\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minimind.tokenizer",
        description="Train a byte-level BPE tokenizer (MiniMind's recipe) on a JSONL corpus and write "
                    "tokenizer.json + tokenizer_config.json (ChatML chat template) to --out.")
    parser.add_argument("--data", nargs="+", required=True, metavar="JSONL",
                        help='corpus file(s): {"text": ...} or {"conversations": [...]} per line')
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--vocab-size", type=int, default=6400,
                        help="vocabulary size, specials included (6400)")
    parser.add_argument("--max-lines", type=int, default=None, help="read at most this many lines in all")
    parser.add_argument("--default-system", default=DEFAULT_SYSTEM_PROMPT,
                        help="system turn the template adds when a conversation has none "
                             f"({DEFAULT_SYSTEM_PROMPT!r})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    out = train_tokenizer(args.data, args.out, args.vocab_size, args.max_lines, args.default_system,
                          show_progress=not args.quiet)
    from minimind.data.tokenizer import load_tokenizer

    tok = load_tokenizer(out)
    print(f"wrote {out}: vocab {tok.vocab_size}, pad {tok.pad_token_id}, bos {tok.bos_token_id}, "
          f"eos {tok.eos_token_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
