"""The SFT dataset: conversations rendered with the chat template, loss on the replies.

As upstream MiniMind's ``SFTDataset`` (MiniMind-3's ``dataset/lm_dataset.py``, d65ef2c): the
conversation is rendered with the tokenizer's chat template (``tools`` taken from a system
message, ``tool_calls`` given as JSON strings decoded, ``add_generation_prompt=False``),
tokenized, cut to ``max_length``, padded; labels keep the tokens of each assistant reply
through the ``<|im_end|>\n`` that closes it (:mod:`minimind.data.labels`). Upstream's two
augmentations (a random system prompt, dropping empty think blocks) are drawn per sample
from (seed, index, epoch). :func:`validate_sft` checks every line while the file is indexed.
"""

from __future__ import annotations

import json
import random

import numpy as np

from minimind.data.base import JsonlDataset, json_kind, parse_line
from minimind.data.errors import DataError, bad_line_message
from minimind.data.labels import assistant_label_rows, newline_tokens
from minimind.data.tokens import FLAG_EMPTY_THINK, FLAG_SYSTEM_OK, FLAG_TRUNCATED

EMPTY_THINK = "<think>\n\n</think>\n\n"
# The roles MiniMind's chat templates (MiniMind2, MiniMind-3) render; a turn with another role
# would vanish from the rendered text without a word.
ROLES = ("system", "user", "assistant", "tool")
# Our own short list (upstream picks from ten similar prompts, Chinese and English).
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are MiniMind, a small but useful language model.",
    "You are a friendly assistant. Answer the user's question clearly.",
    "You are a knowledgeable assistant. Give accurate, short answers.",
    "你是MiniMind，一个乐于助人的小型语言模型。",
    "你是一个可靠的AI助手，请准确地回答问题。",
)


def _check_json_field(msg: dict, key: str, where: str, want: type) -> str | None:
    value = msg.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return (f'{where} "{key}" is a string but not valid JSON; '
                    f'expected a JSON {want.__name__} (or its JSON text)')
    if not isinstance(value, want):
        return f'{where} "{key}" is a JSON {json_kind(value)}; expected an array of objects'
    return None


def validate_sft(line: bytes) -> str | None:
    obj, err = parse_line(line)
    expected = 'expected {"conversations": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}'
    if err:
        return err
    if not isinstance(obj, dict):
        return f"got a JSON {json_kind(obj)}; {expected}"
    if "conversations" not in obj:
        keys = ", ".join(map(repr, list(obj)[:5])) or "none"
        return f'missing key "conversations" (keys present: {keys}); {expected}'
    return conversation_problem(obj["conversations"], "conversations", expected)


def conversation_problem(conv, key: str, expected: str) -> str | None:
    """What is wrong with one list of chat messages (``key`` names it in the message), or None:
    the SFT line rule, shared with each side of a DPO pair."""
    if not isinstance(conv, list) or not conv:
        return f'"{key}" is {"an empty array" if conv == [] else "a JSON " + json_kind(conv)}; {expected}'
    has_assistant = False
    for k, msg in enumerate(conv):
        where = f"{key}[{k}]"
        if not isinstance(msg, dict):
            return f"{where} is a JSON {json_kind(msg)}; expected an object with \"role\" and \"content\""
        role = msg.get("role")
        if not isinstance(role, str):
            return f'{where} has no "role" string; expected "system", "user", "assistant" or "tool"'
        if role not in ROLES:
            return (f"{where} has the role {role!r}, which the chat template does not render (the turn "
                    f"would be dropped from the text); valid roles: {', '.join(ROLES)}")
        content = msg.get("content")
        if content is None and not (role == "assistant" and msg.get("tool_calls")):
            return f'{where} ({role}) has no "content"; expected a string'
        if content is not None and not isinstance(content, str):
            return f'{where} ({role}) "content" is a JSON {json_kind(content)}; expected a string'
        if role == "assistant":
            has_assistant = True
        for field, want in (("tools", list), ("functions", list), ("tool_calls", list)):
            bad = _check_json_field(msg, field, where, want)
            if bad:
                return bad
    if not has_assistant:
        roles = ", ".join(str(m.get("role")) for m in conv[:6])
        return (f'{"" if key == "conversations" else key + ": "}no assistant turn (roles: {roles}); '
                'expected at least one {"role": "assistant", ...} to train on')
    return None


validate_sft.cache_key = "sft-conversations-v2"  # v2: unknown roles are bad lines


class SFTDataset(JsonlDataset):
    """``{"conversations": [{role, content, reasoning_content?, tools?, tool_calls?}, ...]}``
    per line -> (input_ids, labels), loss only on the assistant replies.

    Augmentations (off by default; upstream uses 0.2 and 0.8): with probability
    ``system_prompt_prob`` a conversation without a system turn (and without tools) gets one of
    :data:`SYSTEM_PROMPTS`; with probability ``drop_empty_think_prob`` every empty think block
    ``<think>\\n\\n</think>\\n\\n`` is removed from the rendered text. Each draw is a pure
    function of (seed, index, epoch) (see :meth:`set_epoch`), so order, resume and workers do
    not change what a sample becomes.
    """

    _validator = staticmethod(validate_sft)

    def __init__(self, path, tokenizer=None, max_length: int = 512, on_bad_line: str = "error",
                 system_prompt_prob: float = 0.0, drop_empty_think_prob: float = 0.0, seed: int = 42,
                 cache_dir=None, pretokenize: bool = False):
        for name, p in (("system_prompt_prob", system_prompt_prob),
                        ("drop_empty_think_prob", drop_empty_think_prob)):
            if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= float(p) <= 1.0:
                raise DataError(f"{name}={p!r} is not valid; expected a probability in [0, 1]")
        self.system_prompt_prob = float(system_prompt_prob)
        self.drop_empty_think_prob = float(drop_empty_think_prob)
        self.seed = int(seed)
        super().__init__(path, tokenizer, max_length, on_bad_line, cache_dir, pretokenize)
        tok = self.tokenizer
        # Upstream: tokenizer(f'{bos_token}assistant\n') and tokenizer(f'{eos_token}\n'),
        # without special tokens added.
        self.assistant_start = tok.encode(f"{tok.bos_token}assistant\n")
        self.assistant_end = tok.encode(f"{tok.eos_token}\n")
        # MiniMind2's tokenizer merges that newline with a reply's leading spaces or tabs; its
        # dataset labels such a reply after the merged token (minimind/data/labels.py).
        head = tok.encode(f"{tok.bos_token}assistant")
        self.assistant_newlines = (newline_tokens(tok) if self.assistant_start[:-1] == head else None)

    def _cache_params(self) -> str:
        return "sft"

    # -- rendering -----------------------------------------------------------------------
    @staticmethod
    def _messages_and_tools(conversations: list[dict]) -> tuple[list[dict], list | None]:
        """Upstream's create_chat_prompt: tools come from a system message (``tools``, or
        MiniMind2's ``functions``), JSON strings decoded; ``tool_calls`` strings decoded."""
        messages, tools = [], None
        for m in conversations:
            m = dict(m)
            if m.get("role") == "system" and (m.get("tools") or m.get("functions")):
                raw = m.get("tools") or m.get("functions")
                tools = json.loads(raw) if isinstance(raw, str) else raw
            if m.get("tool_calls") and isinstance(m["tool_calls"], str):
                m["tool_calls"] = json.loads(m["tool_calls"])
            messages.append(m)
        return messages, tools

    @staticmethod
    def _system_ok(conversations: list[dict]) -> bool:
        # Upstream adds a system prompt only when the first turn is not a system turn and no
        # message carries tools.
        return conversations[0].get("role") != "system" and not any(m.get("tools") for m in conversations)

    def _draws(self, i: int) -> tuple[float, int, float]:
        """(u_system, system prompt choice, u_think): always drawn, in this order."""
        rng = random.Random(f"{self.seed}/{self.epoch}/{i}")
        return rng.random(), rng.randrange(len(SYSTEM_PROMPTS)), rng.random()

    def render(self, conversations: list[dict], system_prompt: str | None = None,
               drop_empty_think: bool = False) -> str:
        """The text the model trains on for one conversation."""
        if system_prompt is not None:
            conversations = [{"role": "system", "content": system_prompt}] + list(conversations)
        messages, tools = self._messages_and_tools(conversations)
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=False, tools=tools)
        if drop_empty_think and EMPTY_THINK in prompt:
            prompt = prompt.replace(EMPTY_THINK, "")
        return prompt

    def _render_line(self, i: int, conversations: list[dict], system_prompt: str | None,
                     drop_think: bool) -> str:
        try:
            return self.render(conversations, system_prompt, drop_think)
        except Exception as e:  # jinja errors (raise_exception in the template), bad tools
            raise DataError(bad_line_message(
                self.path, self.index.line_number(i),
                f"the chat template of {self.tokenizer.path} cannot render this conversation: "
                f"{type(e).__name__}: {e}")) from None

    def _encode_prompts(self, prompts: list[str]) -> list[tuple[list[int], bool]]:
        """(ids cut to max_length, truncated?) of each rendered prompt. Upstream:
        ``self.tokenizer(prompt).input_ids``, i.e. with add_special_tokens=True; only the first
        max_length + 1 ids are computed (the same ids)."""
        n = self.max_length
        return [(ids[:n], len(ids) > n)
                for ids in self.tokenizer.encode_prefix_batch(prompts, n, add_special_tokens=True)]

    def _tokenize_for_cache(self, indices: range) -> list[tuple[list[int], int]]:
        prompts, flags = [], []
        for i in indices:
            conversations = self._obj(i)["conversations"]
            prompt = self._render_line(i, conversations, None, False)
            prompts.append(prompt)
            flags.append((FLAG_EMPTY_THINK if EMPTY_THINK in prompt else 0)
                         | (FLAG_SYSTEM_OK if self._system_ok(conversations) else 0))
        return [(ids, flag | (FLAG_TRUNCATED if truncated else 0))
                for (ids, truncated), flag in zip(self._encode_prompts(prompts), flags)]

    def _batch(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        augment = self.system_prompt_prob > 0 or self.drop_empty_think_prob > 0
        rows: list = [None] * len(indices)
        truncated = 0
        prompts, where = [], []
        for b, i in enumerate(indices):
            u_sys, choice, u_think = self._draws(i) if augment else (1.0, 0, 1.0)
            want_sys = u_sys < self.system_prompt_prob
            want_drop = u_think < self.drop_empty_think_prob
            if self._tokens is not None:
                cached, flags = self._tokens.get(i)
                if not ((want_sys and flags & FLAG_SYSTEM_OK) or (want_drop and flags & FLAG_EMPTY_THINK)):
                    rows[b] = cached
                    truncated += bool(flags & FLAG_TRUNCATED)
                    continue
            conversations = self._obj(i)["conversations"]
            system = SYSTEM_PROMPTS[choice] if want_sys and self._system_ok(conversations) else None
            prompts.append(self._render_line(i, conversations, system, want_drop))
            where.append(b)
        for b, (ids, cut) in zip(where, self._encode_prompts(prompts) if prompts else ()):
            rows[b] = ids
            truncated += cut
        self._count(truncated, len(indices))
        ids = self._pad_rows(rows)
        return ids, assistant_label_rows(ids, self.assistant_start, self.assistant_end, self.assistant_newlines)

