"""The DPO dataset: preference pairs, each side rendered and labelled exactly as an SFT sample.

Upstream's format (``dataset/dpo.jsonl``, ``DPODataset`` in MiniMind-3's ``dataset/lm_dataset.py``,
d65ef2c): one ``{"chosen": [messages], "rejected": [messages]}`` per line, each side a list of
chat messages as in an SFT conversation. Each side is rendered with the tokenizer's chat
template, tokenized, cut to ``max_length`` and labelled with the SFT rule (the assistant replies
through their ``<|im_end|>\\n``: :mod:`minimind.data.labels`), through the SFT dataset's own
rendering and encoding (this class is an :class:`~minimind.data.sft.SFTDataset` with another
line validator and another batch). Upstream drops empty think blocks from both sides with
probability 0.8 (``drop_empty_think_prob``); here the draw is one per pair, a pure function of
(seed, index, epoch).

The batch layout is what lets the objective run one forward per micro-batch: the B pairs of a
micro-batch come out of the DataLoader as ONE ``(input_ids, labels)`` batch of 2B rows, the B
chosen first, then the B rejected in the same order (``__getitems__`` returns the 2B rows,
the collate stacks them). Padding trimming, pinning and workers therefore work as for SFT;
``len()`` and the sampler count pairs. ``dataset[i]`` is one pair: two (2, max_length) tensors.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from minimind.data.base import json_kind, parse_line
from minimind.data.errors import DataError
from minimind.data.labels import assistant_label_rows
from minimind.data.sft import SFTDataset, conversation_problem

SIDES = ("chosen", "rejected")
EXPECTED = 'expected {"chosen": [{"role": "user", ...}, {"role": "assistant", ...}], "rejected": [...]}'


def validate_dpo(line: bytes) -> str | None:
    """What is wrong with one line of a DPO file, or None (run on every line while indexing)."""
    obj, err = parse_line(line)
    if err:
        return err
    if not isinstance(obj, dict):
        return f"got a JSON {json_kind(obj)}; {EXPECTED}"
    for side in SIDES:
        if side not in obj:
            keys = ", ".join(map(repr, list(obj)[:5])) or "none"
            return f'missing key "{side}" (keys present: {keys}); {EXPECTED}'
    for side in SIDES:
        problem = conversation_problem(obj[side], side, EXPECTED)
        if problem:
            return problem
    return None


validate_dpo.cache_key = "dpo-pairs-v1"


class DPODataset(SFTDataset):
    """``{"chosen": [...], "rejected": [...]}`` per line -> micro-batches of 2B rows (module doc)."""

    _validator = staticmethod(validate_dpo)

    def __init__(self, path, tokenizer=None, max_length: int = 1024, on_bad_line: str = "error",
                 drop_empty_think_prob: float = 0.0, seed: int = 42, cache_dir=None, pretokenize: bool = False):
        if pretokenize:
            raise DataError("pretokenize=True is not available for DPO pairs: they are tokenized lazily "
                            "(data.pretokenize=false)")
        super().__init__(path, tokenizer, max_length, on_bad_line, system_prompt_prob=0.0,
                         drop_empty_think_prob=drop_empty_think_prob, seed=seed, cache_dir=cache_dir,
                         pretokenize=False)

    def _cache_params(self) -> str:
        return "dpo"

    def __getitem__(self, i: int):
        """One pair: (input_ids, labels), each (2, max_length): row 0 chosen, row 1 rejected."""
        ids, labels = self._batch([i])
        return torch.from_numpy(ids), torch.from_numpy(labels)

    def __getitems__(self, indices: Sequence[int]):
        """2B rows for B pairs: the chosen sides, then the rejected sides (module docstring)."""
        ids, labels = self._batch(list(indices))
        return list(zip(torch.from_numpy(ids).unbind(0), torch.from_numpy(labels).unbind(0)))

    def _batch(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels): two (2B, max_length) int64 arrays, chosen rows first."""
        prompts = {side: [] for side in SIDES}
        for i in indices:
            obj = self._obj(i)
            drop = self.drop_empty_think_prob > 0 and self._draws(i)[2] < self.drop_empty_think_prob
            for side in SIDES:
                prompts[side].append(self._render_line(i, obj[side], None, drop))
        encoded = self._encode_prompts(prompts["chosen"] + prompts["rejected"])
        n = len(indices)
        cut = [c or r for (_, c), (_, r) in zip(encoded[:n], encoded[n:])]  # a pair with either side cut
        self._count(sum(cut), n)
        ids = self._pad_rows([row for row, _ in encoded])
        return ids, assistant_label_rows(ids, self.assistant_start, self.assistant_end)

    def _tokenize_for_cache(self, indices: range):
        raise DataError("DPO pairs have no token cache (data.pretokenize=false)")
