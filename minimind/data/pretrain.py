"""The pretrain dataset: ``{"text": ...}`` per line, upstream MiniMind's pretrain samples.

MiniMind-3 (``dataset/lm_dataset.py``, d65ef2c): ``bos + tokens(text)[:max_length-2] + eos``
right-padded with the pad id; labels are the ids with every pad-id position set to -100.
``add_bos_eos=False`` is MiniMind2's form (c090b69): ``tokens(text)[:max_length]``, the texts
carrying their own specials. In both, as upstream, a real ``<|endoftext|>`` written in a text
has the pad id and so gets -100 too. :func:`validate_pretrain` checks every line while the
file is indexed. An empty (or whitespace-only) text is a valid sample, as upstream's, but it
teaches nothing: such samples are counted (``empty_texts`` in the stats, ``data_empty_texts``
in summary.json).
"""

from __future__ import annotations

import numpy as np

from minimind.data.base import JsonlDataset, json_kind, parse_line
from minimind.data.tokens import FLAG_EMPTY_TEXT, FLAG_TRUNCATED


def validate_pretrain(line: bytes) -> str | None:
    obj, err = parse_line(line)
    if err:
        return err
    if not isinstance(obj, dict):
        return f'expected a JSON object {{"text": "..."}}, got a JSON {json_kind(obj)}'
    if "text" not in obj:
        keys = ", ".join(map(repr, list(obj)[:5])) or "none"
        return f'missing key "text" (keys present: {keys}); expected {{"text": "..."}}'
    if not isinstance(obj["text"], str):
        return f'"text" is a JSON {json_kind(obj["text"])}; expected a string'
    return None


validate_pretrain.cache_key = "pretrain-text-v1"


class PretrainDataset(JsonlDataset):
    """``{"text": ...}`` per line -> (input_ids, labels), both of length ``max_length``.

    ``add_bos_eos=True`` (MiniMind-3): ``bos + tokens[:max_length-2] + eos``, then padding.
    ``add_bos_eos=False`` (MiniMind2): ``tokens[:max_length]``; the texts carry their specials
    (``<|im_start|>...<|im_end|>``), which the tokenizer parses as such. Labels: the ids, with
    -100 wherever the id is the pad id (padding, and a literal ``<|endoftext|>``, as upstream).
    """

    _validator = staticmethod(validate_pretrain)
    _counts_empty = True

    def __init__(self, path, tokenizer=None, max_length: int = 512, add_bos_eos: bool = True,
                 on_bad_line: str = "error", cache_dir=None, pretokenize: bool = False):
        self.add_bos_eos = bool(add_bos_eos)
        super().__init__(path, tokenizer, max_length, on_bad_line, cache_dir, pretokenize)

    def _cache_params(self) -> str:
        return f"add_bos_eos={self.add_bos_eos},empty-flag"  # caches without FLAG_EMPTY_TEXT are rebuilt

    @property
    def _limit(self) -> int:
        """Tokens of the text that are kept."""
        return self.max_length - 2 if self.add_bos_eos else self.max_length

    def _finish(self, tokens: list[int]) -> tuple[list[int], bool]:
        """(ids before padding, truncated?) from the tokens of the whole text (or their first
        ``_limit + 1``: the same result)."""
        limit = self._limit
        if self.add_bos_eos:
            tok = self.tokenizer
            return [tok.bos_token_id] + tokens[:limit] + [tok.eos_token_id], len(tokens) > limit
        return tokens[:limit], len(tokens) > limit

    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        # The first _limit + 1 tokens of each text: enough to keep _limit and to know whether
        # the text was truncated. MiniMind-3 encodes without special tokens added, MiniMind2
        # with (no post-processor in MiniMind's tokenizers, so the same ids either way).
        return self.tokenizer.encode_prefix_batch(texts, self._limit, add_special_tokens=not self.add_bos_eos)

    def _tokenize_for_cache(self, indices: range) -> list[tuple[list[int], int]]:
        out = []
        texts = [self._obj(i)["text"] for i in indices]
        for text, tokens in zip(texts, self._encode_texts(texts)):
            ids, truncated = self._finish(tokens)
            out.append((ids, (FLAG_TRUNCATED if truncated else 0) | (0 if text.strip() else FLAG_EMPTY_TEXT)))
        return out

    def _batch(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        if self._tokens is not None:
            got = [self._tokens.get(i) for i in indices]
            rows = [ids for ids, _ in got]
            truncated = sum(1 for _, flags in got if flags & FLAG_TRUNCATED)
            empty = sum(1 for _, flags in got if flags & FLAG_EMPTY_TEXT)
        else:
            texts = [self._obj(i)["text"] for i in indices]
            done = [self._finish(t) for t in self._encode_texts(texts)]
            rows = [ids for ids, _ in done]
            truncated = sum(t for _, t in done)
            empty = sum(1 for t in texts if not t.strip())
        self._count(truncated, len(indices), empty)
        ids = self._pad_rows(rows)
        return ids, np.where(ids == self.tokenizer.pad_token_id, -100, ids)
