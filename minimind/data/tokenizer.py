"""Tokenizer loading: a HF ``tokenizers`` BPE plus the chat template, no ``transformers``.

``load_tokenizer(path)`` reads a MiniMind tokenizer directory (``tokenizer.json`` and, if
present, ``tokenizer_config.json``), the same files upstream loads with
``AutoTokenizer.from_pretrained``. Encoding goes through the ``tokenizers`` backend exactly as
``PreTrainedTokenizerFast`` does (added tokens such as ``<|im_start|>`` or ``<think>`` written
inside a text are recognised as tokens), and ``apply_chat_template`` renders the Jinja
template the way ``transformers`` does (sandboxed, ``trim_blocks``/``lstrip_blocks``,
``raise_exception``, ``strftime_now``, a ``tojson`` that does not HTML-escape, the special
token names as template variables), so MiniMind2's and MiniMind-3's real templates give the
same string they give under ``transformers``. ``encode_prefix_batch`` (the first ``limit + 1``
ids of each text, tokenizing only that much) is a thin call into :mod:`minimind.data.prefix`.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime
from functools import lru_cache
from typing import Any, Iterable

from minimind.data import prefix
from minimind.data.errors import DataError

PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"

# Used when a tokenizer directory has no chat_template: plain ChatML, one block per message.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# transformers fills reasoning_content from these older names before rendering.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _token_content(value) -> str | None:
    """tokenizer_config.json writes a token as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """A byte-level BPE tokenizer with MiniMind's special tokens and a chat template.

    Picklable (DataLoader workers get a copy): the backend travels as its JSON, the compiled
    template is rebuilt on first use.
    """

    def __init__(self, backend, config: dict | None = None, path: str | None = None):
        self._backend = backend
        self.config = dict(config or {})
        self.path = path
        self.chat_template: str = self._pick_template(self.config.get("chat_template"))
        self.pad_token = _token_content(self.config.get("pad_token")) or PAD_TOKEN
        self.bos_token = _token_content(self.config.get("bos_token")) or BOS_TOKEN
        self.eos_token = _token_content(self.config.get("eos_token")) or EOS_TOKEN
        self.pad_token_id = self._require_id(self.pad_token, "pad")
        self.bos_token_id = self._require_id(self.bos_token, "bos")
        self.eos_token_id = self._require_id(self.eos_token, "eos")
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.clean_up_tokenization_spaces = bool(self.config.get("clean_up_tokenization_spaces", False))

    # -- construction helpers ------------------------------------------------------------
    @staticmethod
    def _pick_template(template) -> str:
        if isinstance(template, list):  # HF also stores [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        return template if isinstance(template, str) and template else DEFAULT_CHAT_TEMPLATE

    def _require_id(self, token: str, what: str) -> int:
        tid = self._backend.token_to_id(token)
        if tid is None:
            raise DataError(
                f"tokenizer {self.path or '(in memory)'}: its {what} token {token!r} is not in the "
                f"vocabulary; expected MiniMind's specials {PAD_TOKEN} (pad), {BOS_TOKEN} (bos), "
                f"{EOS_TOKEN} (eos), or {what}_token in tokenizer_config.json naming a token that exists"
            )
        return tid

    # -- pickling ------------------------------------------------------------------------
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_backend"] = self._backend.to_str()
        return state

    def __setstate__(self, state):
        from tokenizers import Tokenizer as _Backend

        state = dict(state)
        state["_backend"] = _Backend.from_str(state["_backend"])
        self.__dict__.update(state)

    # -- encoding ------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (f"Tokenizer(path={self.path!r}, vocab_size={self.vocab_size}, pad={self.pad_token_id}, "
                f"bos={self.bos_token_id}, eos={self.eos_token_id})")

    @property
    def backend(self):
        """The ``tokenizers.Tokenizer`` underneath."""
        return self._backend

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``. Added tokens written in the text (``<|im_end|>``) become their
        ids, as in transformers. ``add_special_tokens`` only runs the backend's post-processor
        (none in MiniMind's tokenizers, so both settings give the same ids there)."""
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [e.ids for e in self._backend.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def _encode_many(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        # The ids of encode_batch without the offsets (tokenizers >= 0.21): about twice as fast.
        fast = getattr(self._backend, "encode_batch_fast", None) or self._backend.encode_batch
        return [e.ids for e in fast(texts, add_special_tokens=add_special_tokens)]

    def encode_prefix(self, text: str, limit: int, add_special_tokens: bool = False) -> list[int]:
        """``encode(text, add_special_tokens)[:limit + 1]``, exactly, tokenizing only as much of
        ``text`` as that needs (see :meth:`encode_prefix_batch`)."""
        return self.encode_prefix_batch([text], limit, add_special_tokens)[0]

    def encode_prefix_batch(self, texts: list[str], limit: int,
                            add_special_tokens: bool = False) -> list[list[int]]:
        """``[encode(t, add_special_tokens)[:limit + 1] for t in texts]``, exactly, each text
        tokenized only up to a little past its ``limit + 1``-th token where this tokenizer
        allows it (:mod:`minimind.data.prefix`: how, and why that is exact)."""
        plan = self._prefix_plan()
        out, self._cpt = prefix.encode_prefix_batch(
            texts, limit, plan, lambda pieces: self._encode_many(pieces, add_special_tokens),
            lambda text: self.encode(text, add_special_tokens=add_special_tokens), self._cpt)
        return out

    def _prefix_plan(self):
        """:func:`minimind.data.prefix.prefix_plan` of this tokenizer; computed once, and again
        when the backend changes."""
        key = prefix.plan_key(self._backend)
        cached = self.__dict__.get("_prefix_plan_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        self._prefix_plan_cache = (key, prefix.prefix_plan(json.loads(self._backend.to_str())))
        return self._prefix_plan_cache[1]

    _cpt = 1.0  # running estimate of characters per token (per process), for encode_prefix_batch

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        text = self._backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces:
            text = _clean_up_tokenization(text)
        return text

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(int(token_id))

    @property
    def special_tokens_map(self) -> dict[str, Any]:
        """What transformers passes to the template as variables (bos_token, eos_token, ...)."""
        out: dict[str, Any] = {}
        for key in _SPECIAL_KEYS:
            value = _token_content(self.config.get(key))
            if value is not None:
                out[key] = value
        for key, value in (("bos_token", self.bos_token), ("eos_token", self.eos_token),
                           ("pad_token", self.pad_token)):
            out.setdefault(key, value)
        extra = [_token_content(t) for t in self.config.get("additional_special_tokens") or []]
        extra = [t for t in extra if t]
        if extra:
            out["additional_special_tokens"] = extra
        return out

    @property
    def fingerprint(self) -> str:
        """Hash of the vocabulary, merges, specials and template: keys token caches."""
        h = hashlib.blake2b(digest_size=16)
        h.update(self._backend.to_str().encode())
        h.update(b"\0" + self.chat_template.encode())
        h.update(f"\0{self.pad_token_id},{self.bos_token_id},{self.eos_token_id}".encode())
        return h.hexdigest()

    # -- chat template -------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False,
                            tools: list[dict] | None = None, chat_template: str | None = None,
                            **kwargs) -> str:
        """Render ``messages`` with the chat template, as ``transformers`` does with
        ``tokenize=False``: messages are copied, keys whose value is None are dropped, the
        reasoning field is aliased (``thinking``/``reasoning`` -> ``reasoning_content``), and
        the template sees ``messages``, ``tools``, ``documents``, ``add_generation_prompt``,
        the special token names and any extra ``kwargs`` (e.g. ``open_thinking=True``)."""
        if not messages:
            raise DataError("cannot apply the chat template to an empty conversation; "
                            "expected at least one message")
        chat = []
        for m in messages:
            if not isinstance(m, dict):
                raise DataError(f"chat messages must be dicts with 'role' and 'content', got {m!r}")
            m = {k: v for k, v in m.items() if v is not None}
            reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
            if reasoning is not None:
                m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
            chat.append(m)
        if tools is not None:
            for tool in tools:
                if not isinstance(tool, dict):
                    raise DataError(f"tools must be JSON-schema dicts, got {tool!r}")
        documents = kwargs.pop("documents", None)
        template = _compile_template(chat_template or self.chat_template)
        variables = {**self.special_tokens_map, **kwargs}
        return template.render(messages=chat, tools=tools, documents=documents,
                               add_generation_prompt=add_generation_prompt, **variables)


def _clean_up_tokenization(text: str) -> str:
    # transformers' clean_up_tokenization (only when tokenizer_config.json asks for it).
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


@lru_cache(maxsize=32)
def _compile_template(source: str):
    """A Jinja environment configured like transformers' chat-template renderer."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):
        # transformers' {% generation %}...{% endgeneration %} marks assistant text for its
        # assistant mask; rendering a string only needs the body.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson HTML-escapes <, >, &, ' ; transformers' does not.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


def _demo_tokenizer_dir() -> str:
    from minimind.data.assets import ASSETS_DIR

    return os.path.join(ASSETS_DIR, "demo", "tokenizer")


def load_tokenizer(path: str | os.PathLike | None = None) -> Tokenizer:
    """Load a tokenizer directory (``tokenizer.json`` + optional ``tokenizer_config.json``),
    a ``tokenizer.json`` file (its sibling ``tokenizer_config.json`` is used if present), or,
    with ``path=None``, the embedded demo tokenizer. An already loaded Tokenizer is returned
    as is."""
    if isinstance(path, Tokenizer):
        return path
    from tokenizers import Tokenizer as _Backend

    expected = ("expected a directory holding tokenizer.json (HF tokenizers format) and optionally "
                "tokenizer_config.json (chat_template, bos/eos/pad tokens), or a tokenizer.json file")
    if path is None:
        path = _demo_tokenizer_dir()
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if os.path.isdir(path):
        directory, tok_file = path, os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tok_file):
            present = sorted(os.listdir(path))[:10]
            raise DataError(f"tokenizer directory {path} has no tokenizer.json (it holds: "
                            f"{', '.join(present) if present else 'nothing'}); {expected}")
    elif os.path.isfile(path):
        directory, tok_file = os.path.dirname(path), path
    else:
        raise DataError(f"tokenizer not found: {path} does not exist; {expected}")

    try:
        backend = _Backend.from_file(tok_file)
    except Exception as e:  # the Rust side raises plain Exception on malformed JSON
        raise DataError(f"cannot read tokenizer {tok_file}: {e}; {expected}") from None

    config: dict = {}
    cfg_file = os.path.join(directory, "tokenizer_config.json")
    if os.path.isfile(cfg_file):
        try:
            with open(cfg_file, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read {cfg_file}: {e}; expected a JSON object "
                            "(chat_template, bos_token, eos_token, pad_token)") from None
        if not isinstance(config, dict):
            raise DataError(f"{cfg_file} must hold a JSON object, got {type(config).__name__}")
    # A chat_template.jinja beside the config (transformers' newer layout) wins over the
    # config's chat_template, as it does in transformers.
    jinja_file = os.path.join(directory, "chat_template.jinja")
    if os.path.isfile(jinja_file):
        with open(jinja_file, encoding="utf-8") as f:
            config["chat_template"] = f.read()
    return Tokenizer(backend, config, path=directory if os.path.isdir(path) else path)
