"""Tokenizer loading: a HF ``tokenizers`` BPE plus the chat template, no ``transformers``.

``load_tokenizer(path)`` reads a MiniMind tokenizer directory (``tokenizer.json`` and, if
present, ``tokenizer_config.json``), the same files upstream loads with
``AutoTokenizer.from_pretrained``. Encoding goes through the ``tokenizers`` backend exactly as
``PreTrainedTokenizerFast`` does (added tokens such as ``<|im_start|>`` or ``<think>`` written
inside a text are recognised as tokens), and ``apply_chat_template`` renders the Jinja
template the way ``transformers`` does (sandboxed, ``trim_blocks``/``lstrip_blocks``,
``raise_exception``, ``strftime_now``, a ``tojson`` that does not HTML-escape, the special
token names as template variables), so MiniMind2's and MiniMind-3's real templates give the
same string they give under ``transformers``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import datetime
from functools import lru_cache
from typing import Any, Iterable

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
        """``[encode(t, add_special_tokens)[:limit + 1] for t in texts]``, exactly, but each text
        is tokenized only up to a little past the ``limit + 1``-th token: a dataset that keeps
        ``max_length`` tokens of a text (and needs one more to know it was truncated) does not
        pay for the rest of it.

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
        limit = int(limit)
        if limit < 0:
            raise ValueError(f"limit={limit} must be >= 0")
        plan = self._prefix_plan()
        if plan is None:
            return [ids[:limit + 1] for ids in self._encode_many(list(texts), add_special_tokens)]
        want = limit + 1
        out: list[list[int] | None] = [None] * len(texts)
        todo = []  # [k, text, start, ids so far]
        for k, text in enumerate(texts):
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:  # lone surrogates: the full encode raises, as before
                    out[k] = self.encode(text, add_special_tokens=add_special_tokens)[:want]
                    continue
            todo.append([k, text, 0, []])
        cpt = self._cpt
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
            for item, ids in zip(todo, self._encode_many(pieces, add_special_tokens)):
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
        self._cpt = cpt
        return out

    def _prefix_plan(self):
        """The added tokens' two-character windows when :meth:`encode_prefix_batch` may cut texts
        (see there), else None. Computed once, and again when the backend changes (tokens
        added, another normalizer, pre-tokenizer, post-processor, truncation or padding): a
        few microseconds per call to check."""
        b = self._backend
        norm, pre, post = b.normalizer, b.pre_tokenizer, b.post_processor
        key = (b.get_vocab_size(with_added_tokens=True), str(b.truncation), str(b.padding),
               norm and norm.__getstate__(), pre and pre.__getstate__(), post and post.__getstate__(),
               getattr(b.model, "dropout", None))
        cached = self.__dict__.get("_prefix_plan_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        self._prefix_plan_cache = (key, _prefix_plan(json.loads(self._backend.to_str())))
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


# -- prefix encoding (Tokenizer.encode_prefix_batch) ----------------------------------------
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


def _prefix_plan(spec: dict) -> frozenset | None:
    """For a tokenizer.json dict: None unless prefix encoding is exact for it (see
    Tokenizer.encode_prefix_batch), else the set of two-character windows of its added tokens."""
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
