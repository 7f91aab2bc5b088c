"""Attention over packed rows: several samples in one row, and no token sees another sample.

With ``data.packing=true`` (:mod:`minimind.data.packing`) a row of a micro-batch holds several
samples ("documents") back to back. The model is told where they are by ``position_ids``: the
positions of every document restart at 0, as transformers' flattening collator does, so a
document begins wherever ``position_ids == 0``. Two things then make a packed row compute
exactly what the samples compute on their own rows:

- RoPE reads the cos/sin tables at each token's position id (``MiniMindModel.forward``), so a
  token at offset p of its document gets the rotation of position p, as unpacked;
- attention is block-diagonal causal: query i sees key j only when j <= i and both lie in the
  same document (:class:`Documents`).

The loss side (a document's first token is no target of the previous document's last token) is
the collate's job: it sets those labels to -100.

Two ways to compute the masked attention, chosen per call (:meth:`Documents.backend`):

- ``sdpa``: ``F.scaled_dot_product_attention`` with a boolean (B, 1, T, T) mask built once per
  forward from the position ids. Every device and dtype; the same O(T^2) work as unpacked causal
  attention (masked blocks are computed, then dropped). The path on CPU, for fp32 on CUDA, with
  attention dropout, and whenever ``cu_seqlens`` is not given.
- ``varlen``: flash attention over variable-length sequences
  (``torch.nn.attention.varlen.varlen_attn``): each document is its own causal sequence, so the
  cross-document blocks cost nothing. CUDA (sm80+), fp16/bf16, given the ``cu_seqlens`` that the
  collate computed on the host (finding the documents on the device would be a data-dependent
  op, i.e. a host sync per step). Not runnable on a CPU; its plumbing (flattening, offsets,
  GQA) is tested on CPU against ``sdpa`` with a stand-in kernel.

Attention is only a small share of these models' FLOPs at 512 tokens (the 12LHQT term is about
10% of 6N for MiniMind2-26M at 340), so the win of packing is the padding it removes, and
``sdpa`` already gets nearly all of it.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

_HALF = (torch.float16, torch.bfloat16)


def _find_varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch before varlen_attn
        return None
    return varlen_attn


# looked up once at import, so the forward (possibly under torch.compile) reads a plain global
VARLEN_ATTN = _find_varlen()


def _varlen_device_ok(device: torch.device) -> bool:
    """Flash attention's requirement: compute capability 8.0 or newer."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T): the index of each token's document in its row (a new one at each 0)."""
    return (position_ids == 0).cumsum(dim=-1)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, T, kv_heads, D) -> (B, T, kv_heads * n_rep, D): each k/v head serves n_rep query heads."""
    if n_rep == 1:
        return x
    b, t, kv_heads, d = x.shape
    return x[:, :, :, None, :].expand(b, t, kv_heads, n_rep, d).reshape(b, t, kv_heads * n_rep, d)


class Documents:
    """Where the documents of a packed micro-batch are; built once per forward, used by every layer.

    ``position_ids``: (B, T), restarting at 0 at each document. ``cu_seqlens``: optional (D + 1,)
    int32 offsets of every document (padding included) in the flattened (B * T) rows, from the
    collate; only the ``varlen`` backend needs them.
    """

    def __init__(self, position_ids: torch.Tensor, cu_seqlens: Optional[torch.Tensor] = None):
        self.position_ids = position_ids
        self.cu_seqlens = cu_seqlens
        self._mask: Optional[torch.Tensor] = None

    def mask(self) -> torch.Tensor:
        """(B, 1, T, T) bool, True where query i may see key j: same document and j <= i."""
        if self._mask is None:
            doc = document_ids(self.position_ids)
            t = doc.shape[-1]
            causal = torch.ones(t, t, dtype=torch.bool, device=doc.device).tril()
            self._mask = ((doc[:, :, None] == doc[:, None, :]) & causal)[:, None]
        return self._mask

    def backend(self, q: torch.Tensor, dropout_p: float) -> str:
        if (q.is_cuda and self.cu_seqlens is not None and q.dtype in _HALF and dropout_p == 0.0
                and VARLEN_ATTN is not None and _varlen_device_ok(q.device)):
            return "varlen"
        return "sdpa"

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, n_rep: int,
               dropout_p: float = 0.0, sdpa: bool = True) -> torch.Tensor:
        """q: (B, T, H, D); k, v: (B, T, KV, D) (before repeat_kv). Returns (B, H, T, D), as the
        unpacked path does. ``sdpa=False`` (``model.flash_attn=false``) takes the explicit
        masked-softmax path."""
        bsz, seq_len, n_heads, head_dim = q.shape
        if sdpa and self.backend(q, dropout_p) == "varlen":
            flat = bsz * seq_len
            out = VARLEN_ATTN(q.reshape(flat, n_heads, head_dim), k.reshape(flat, -1, head_dim),
                                  v.reshape(flat, -1, head_dim), self.cu_seqlens, self.cu_seqlens,
                                  seq_len, seq_len, window_size=(-1, 0), enable_gqa=n_rep > 1)
            return out.view(bsz, seq_len, n_heads, head_dim).transpose(1, 2)
        q = q.transpose(1, 2)
        k = repeat_kv(k, n_rep).transpose(1, 2)
        v = repeat_kv(v, n_rep).transpose(1, 2)
        if sdpa:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask(), dropout_p=dropout_p)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(head_dim)
        scores = scores.masked_fill(~self.mask(), float("-inf"))
        probs = F.softmax(scores.float(), dim=-1).type_as(q)
        return F.dropout(probs, dropout_p) @ v
