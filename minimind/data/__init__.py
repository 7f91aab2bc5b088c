"""The data layer: JSONL index, pretrain/SFT datasets, tokenizer loading, the demo assets.

One job per module: ``index`` (the line index), ``cachefile`` (the on-disk format and places
of the index and token caches), ``tokens`` (the token cache), ``base`` (what both datasets
share), ``pretrain``, ``sft`` and ``dpo`` (the datasets and their line validators), ``labels`` (SFT
labels), ``tokenizer`` and ``prefix`` (loading and encoding; prefix tokenization), ``sampler``,
``packing`` (data.packing: several samples per row, in the collate), ``loader``, ``assets``,
``errors``.

Importing ``minimind.data`` stays cheap: torch (datasets) and ``tokenizers`` load on first
use of the names that need them, and ``minimind.data.assets`` (what the config layer uses to
resolve ``${mm.asset:...}``) is stdlib only.
"""

from __future__ import annotations

from minimind.data.assets import asset_path
from minimind.data.errors import DataError

__all__ = ["load_tokenizer", "Tokenizer", "PretrainDataset", "SFTDataset", "DPODataset", "DataError",
           "JsonlIndex", "asset_path"]

_LAZY = {
    "load_tokenizer": "minimind.data.tokenizer",
    "Tokenizer": "minimind.data.tokenizer",
    "JsonlIndex": "minimind.data.index",
    "PretrainDataset": "minimind.data.pretrain",
    "SFTDataset": "minimind.data.sft",
    "DPODataset": "minimind.data.dpo",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'minimind.data' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
