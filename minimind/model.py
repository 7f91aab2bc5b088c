"""The MiniMind decoder-only transformer, with upstream's math and state-dict key names.

Upstream is jingyaogong/minimind ``model/model_minimind.py`` (MiniMind2 = c090b69, MiniMind-3 =
d65ef2c). This is a plain ``nn.Module`` rewrite without transformers: a Llama-style pre-norm
decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU, optional MoE) with tied embeddings and no
biases. Weights saved here load into upstream's model with ``strict=True`` and the other way round:
the parameter names and shapes are upstream's exactly (tests/test_model.py pins the key lists).

The network is one module on purpose (about 500 lines, over the project's 450): like
nanoGPT's model.py it reads top to bottom in one sitting, and every piece is upstream's math.

Reading order: RMSNorm, RoPE, Attention, FeedForward / MoEFeedForward, Block, MiniMindModel,
MiniMindForCausalLM (forward, loss, generate), then building and parameter counting. Weight
files (upstream's .pth, safetensors) are read and written by :mod:`minimind.weights`. Two helpers
live beside it so this file stays readable: :mod:`minimind.attention` (packed rows: the
block-diagonal causal attention behind ``position_ids``) and :mod:`minimind.moe` (sending tokens
to their experts without a host sync).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from minimind.attention import Documents, repeat_kv
from minimind.model_config import MiniMindConfig
from minimind.moe import dispatch

# per layer: (keys, values), each (B, T, kv_heads, head_dim), before repeat_kv (as upstream)
KVCache = list[tuple[torch.Tensor, torch.Tensor]]
IGNORE_INDEX = -100


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 so the mean of squares neither overflows in fp16 nor loses bits in bf16
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * normed).type_as(x)


def rope_frequencies(head_dim: int, end: int, theta: float, scaling: Mapping[str, Any] | None = None):
    """Inverse frequencies of the rotary pairs, and the attention factor, with upstream's YaRN.

    YaRN (upstream's formula): f'(i) = f(i) * ((1 - ramp(i)) + ramp(i) / factor), ramp a linear
    ramp from 0 at dim index `low` to 1 at `high`, where `low`/`high` are the dims that turn
    beta_fast / beta_slow times over the original length. High-frequency dims keep their speed,
    low-frequency dims are slowed by `factor`. It only applies when the table is longer than the
    original length (end > original_max_position_embeddings); it then changes every position of
    the slowed dims, not only the positions beyond the original length.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    attn_factor = 1.0
    if scaling is not None:
        orig_max = scaling.get("original_max_position_embeddings", 2048)
        factor = scaling.get("factor", 16)
        beta_fast = scaling.get("beta_fast", 32.0)
        beta_slow = scaling.get("beta_slow", 1.0)
        attn_factor = scaling.get("attention_factor", 1.0)
        if end / orig_max > 1.0:
            def dim_of(turns: float) -> float:  # dim index whose wavelength fits `turns` times in orig_max
                return head_dim * math.log(orig_max / (turns * 2 * math.pi)) / (2 * math.log(theta))
            low = max(math.floor(dim_of(beta_fast)), 0)
            high = min(math.ceil(dim_of(beta_slow)), head_dim // 2 - 1)
            ramp = ((torch.arange(head_dim // 2).float() - low) / max(high - low, 0.001)).clamp(0, 1)
            inv_freq = inv_freq * (1 - ramp + ramp / factor)
    return inv_freq, attn_factor


def precompute_rope(head_dim: int, end: int, theta: float = 1e6,
                    scaling: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (end, head_dim), halves repeated for rotate-half."""
    inv_freq, attn_factor = rope_frequencies(head_dim, end, theta, scaling)
    angles = torch.outer(torch.arange(end, device=inv_freq.device).float(), inv_freq)
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1) * attn_factor
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1) * attn_factor
    return cos, sin


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q, k: (B, T, heads, head_dim); cos, sin: (T, head_dim), or (B, T, head_dim) when gathered
    at position ids (packed rows). Result in q's dtype."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
    q_out = (q * cos + rotate_half(q) * sin).to(q.dtype)
    k_out = (k * cos + rotate_half(k) * sin).to(k.dtype)
    return q_out, k_out


class Attention(nn.Module):
    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.n_rep = self.n_heads // self.n_kv_heads
        self.head_dim = config.resolved_head_dim
        h = config.hidden_size
        self.q_proj = nn.Linear(h, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, h, bias=False)
        if config.qk_norm:  # MiniMind-3: keeps q.k logits bounded, per head
            self.q_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.dropout = config.dropout
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.flash = config.flash_attn

    def forward(self, x, cos, sin, past_kv=None, use_cache=False, attention_mask=None, documents=None):
        bsz, seq_len, _ = x.shape
        q = self.q_proj(x).view(bsz, seq_len, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(bsz, seq_len, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(bsz, seq_len, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, k, cos, sin)
        if past_kv is not None:
            k = torch.cat([past_kv[0], k], dim=1)
            v = torch.cat([past_kv[1], v], dim=1)
        present = (k, v) if use_cache else None
        dropout_p = self.dropout if self.training else 0.0
        if documents is not None:  # packed rows: block-diagonal causal attention (minimind.attention)
            out = documents.attend(q, k, v, n_rep=self.n_rep, dropout_p=dropout_p, sdpa=self.flash)
            out = out.transpose(1, 2).reshape(bsz, seq_len, -1)
            return self.resid_dropout(self.o_proj(out)), present

        q = q.transpose(1, 2)  # (B, heads, T, D)
        k = repeat_kv(k, self.n_rep).transpose(1, 2)
        v = repeat_kv(v, self.n_rep).transpose(1, 2)

        # SDPA where its masking is exact: a full causal prefix, or one new token against the cache
        # (which may see every key). Prefill on top of a cache, or padding, needs explicit masks.
        if self.flash and attention_mask is None and (past_kv is None or seq_len == 1):
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=past_kv is None)
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            total = k.shape[2]
            # query i sits at absolute position total - seq_len + i and may see keys up to there
            future = torch.ones(seq_len, total, dtype=torch.bool, device=x.device).triu(total - seq_len + 1)
            scores = scores.masked_fill(future, float("-inf"))
            if attention_mask is not None:  # (B, total) with 1 = real token, 0 = padding
                scores = scores + (1.0 - attention_mask[:, None, None, :].to(scores.dtype)) * -1e9
            probs = F.softmax(scores.float(), dim=-1).type_as(q)
            out = self.attn_dropout(probs) @ v
        out = out.transpose(1, 2).reshape(bsz, seq_len, -1)
        return self.resid_dropout(self.o_proj(out)), present


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: MiniMindConfig, intermediate_size: int | None = None):
        super().__init__()
        inter = intermediate_size or config.resolved_intermediate_size
        self.gate_proj = nn.Linear(config.hidden_size, inter, bias=False)
        self.down_proj = nn.Linear(inter, config.hidden_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, inter, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class MoEFeedForward(nn.Module):
    """Routed SwiGLU experts (+ shared experts that every token passes through).

    Router: softmax over `gate(x)`, top-k experts per token, weights renormalised to sum to 1.
    Family differences, as upstream:
    - renormalisation: MiniMind2 only renormalises when top_k > 1; MiniMind-3 always does, so with
      top-1 the weight is p / (p + 1e-20) ~= 1 and the LM loss sends (almost) no gradient to the
      router, which then learns from the aux loss alone.
    - aux loss (training only, alpha = aux_loss_alpha), with P_e the mean router probability and
      c_e the number of (token, slot) assignments to expert e:
        seq_aux (MiniMind2):  mean_b sum_e [c_be / (T * k / E)] * P_be * alpha    (per sequence b)
        MiniMind2 token-level: sum_e [c_e / (N * k) * E] * P_e * alpha           (N = B * T tokens)
        MiniMind-3:           sum_e [c_e / N] * P_e * E * alpha                   (= the above for k = 1)
    """

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.n_experts = config.n_routed_experts
        self.top_k = config.num_experts_per_tok
        self.alpha = config.aux_loss_alpha
        self.seq_aux = config.seq_aux
        self.family = config.family
        self.renormalize = config.norm_topk_prob and (self.top_k > 1 or config.family == "minimind3")
        # upstream MiniMind2 keeps the router as a bare `weight` parameter, MiniMind-3 as nn.Linear;
        # both are saved as `mlp.gate.weight` with shape (n_experts, hidden)
        self.gate = nn.Linear(config.hidden_size, self.n_experts, bias=False)
        self.experts = nn.ModuleList(
            FeedForward(config, config.resolved_moe_intermediate_size) for _ in range(self.n_experts))
        if config.n_shared_experts > 0:
            self.shared_experts = nn.ModuleList(FeedForward(config) for _ in range(config.n_shared_experts))
        else:
            self.shared_experts = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bsz, seq_len, hidden = x.shape
        flat = x.reshape(-1, hidden)
        scores = F.softmax(self.gate(flat), dim=-1, dtype=torch.float32)  # (N, E)
        topk_weight, topk_idx = torch.topk(scores, k=self.top_k, dim=-1, sorted=False)
        if self.renormalize:
            topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)

        # every expert on its tokens without a host sync; every expert gets a gradient (minimind.moe)
        y = dispatch(flat, topk_idx, topk_weight, self.experts).view(bsz, seq_len, hidden)
        if self.shared_experts is not None:
            for expert in self.shared_experts:
                y = y + expert(x)
        return y, self._aux_loss(scores, topk_idx, bsz, seq_len)

    def _aux_loss(self, scores, topk_idx, bsz, seq_len) -> torch.Tensor:
        if not (self.training and self.alpha > 0):
            return scores.new_zeros(())
        n_tokens, k, n_exp = scores.shape[0], self.top_k, self.n_experts
        if self.seq_aux:
            counts = torch.zeros(bsz, n_exp, device=scores.device)
            counts.scatter_add_(1, topk_idx.view(bsz, -1), torch.ones(bsz, seq_len * k, device=scores.device))
            load = counts / (seq_len * k / n_exp)
            return (load * scores.view(bsz, seq_len, n_exp).mean(dim=1)).sum(dim=1).mean() * self.alpha
        # scatter_add, not one_hot: one_hot checks its input's range with a host read on CPU
        counts = torch.zeros(n_exp, device=scores.device).scatter_add_(
            0, topk_idx.reshape(-1), torch.ones(topk_idx.numel(), device=scores.device))
        if self.family == "minimind2":
            load = counts / (n_tokens * k) * n_exp
        else:
            load = counts / n_tokens * n_exp
        return (load * scores.mean(0)).sum() * self.alpha


class MiniMindBlock(nn.Module):
    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = MoEFeedForward(config) if config.use_moe else FeedForward(config)

    def forward(self, h, cos, sin, past_kv=None, use_cache=False, attention_mask=None, documents=None):
        attn_out, present = self.self_attn(self.input_layernorm(h), cos, sin, past_kv, use_cache,
                                           attention_mask, documents)
        h = h + attn_out
        if isinstance(self.mlp, MoEFeedForward):
            mlp_out, aux = self.mlp(self.post_attention_layernorm(h))
        else:
            mlp_out, aux = self.mlp(self.post_attention_layernorm(h)), None
        return h + mlp_out, present, aux


class MiniMindModel(nn.Module):
    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(MiniMindBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        cos, sin = precompute_rope(config.resolved_head_dim, config.max_position_embeddings,
                                   config.rope_theta, config.rope_scaling)
        # not persistent: derived from the config, and upstream's files do not contain them
        self.register_buffer("freqs_cos", cos, persistent=False)
        self.register_buffer("freqs_sin", sin, persistent=False)

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False,
                position_ids=None, cu_seqlens=None):
        seq_len = input_ids.shape[1]
        past = past_key_values if past_key_values is not None else [None] * len(self.layers)
        start = past[0][0].shape[1] if past[0] is not None else 0
        if start + seq_len > self.freqs_cos.shape[0]:
            raise ValueError(f"sequence of {start + seq_len} positions is longer than "
                             f"model.max_position_embeddings={self.freqs_cos.shape[0]}")
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # nothing padded: keep the fast SDPA path (one check per forward)
        documents = None
        if position_ids is not None:  # packed rows (data.packing): see minimind.attention
            if past_key_values is not None or attention_mask is not None:
                raise ValueError("position_ids (packed rows) cannot be combined with past_key_values "
                                 "or attention_mask")
            cos, sin = self.freqs_cos[position_ids], self.freqs_sin[position_ids]
            documents = Documents(position_ids, cu_seqlens)
        else:
            cos = self.freqs_cos[start:start + seq_len]
            sin = self.freqs_sin[start:start + seq_len]

        h = self.dropout(self.embed_tokens(input_ids))
        presents = []
        aux_loss = torch.zeros((), device=h.device)
        for layer, layer_past in zip(self.layers, past):
            h, present, aux = layer(h, cos, sin, layer_past, use_cache, attention_mask, documents)
            presents.append(present)
            if aux is not None:
                aux_loss = aux_loss + aux
        return self.norm(h), (presents if use_cache else None), aux_loss


@dataclass
class CausalLMOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None       # token-mean CE in fp32, None without labels
    aux_loss: torch.Tensor | None = None   # MoE load-balancing loss (0 in eval / dense); add it yourself
    past_key_values: KVCache | None = None


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross entropy: position t predicts labels[t+1]; -100 labels are ignored; fp32.

    reduction="sum" lets the training loop divide by the loss tokens of a whole accumulation
    window (count_loss_tokens), so the accumulated gradient is the true per-token mean. "mean"
    returns 0 (not NaN) when every label is ignored.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r} is invalid: must be 'mean' or 'sum'")
    shifted = logits[:, :-1, :].float()
    targets = labels[:, 1:].to(shifted.device)
    total = F.cross_entropy(shifted.reshape(-1, shifted.size(-1)), targets.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    if reduction == "sum":
        return total
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


def count_loss_tokens(labels: torch.Tensor) -> torch.Tensor:
    """Number of positions that contribute to the loss: labels[:, 1:] != -100 (a tensor, no host sync)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


class MiniMindForCausalLM(nn.Module):
    def __init__(self, config: MiniMindConfig):
        super().__init__()
        config.validate()
        if config.vocab_size is None:
            raise ValueError("model.vocab_size is null: set it, or fill it in from the tokenizer "
                             "(launch.py does) before building the model")
        self.config = config
        self.model = MiniMindModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.lm_head.weight = self.model.embed_tokens.weight  # tied, as upstream: one tensor, two names
        self.apply(self._init_weights)
        # DDP would broadcast every buffer from rank 0 on each forward; the RoPE tables are the same
        # on every rank (computed from the config), so skip them (fully qualified names)
        self._ddp_params_and_buffers_to_ignore = ["model.freqs_cos", "model.freqs_sin"]

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # N(0, 0.02) for every matrix, as upstream MiniMind-3 (transformers' post_init); norms stay at 1
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, past_key_values: KVCache | None = None,
                use_cache: bool = False, logits_to_keep: int | slice = 0,
                position_ids: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None) -> CausalLMOutput:
        """``position_ids`` (B, T) restarting at 0 at each sample: a packed micro-batch (several
        samples per row, no token attending across samples; ``cu_seqlens``: their offsets in the
        flattened rows, for the varlen kernel on CUDA). See :mod:`minimind.attention`."""
        h, presents, aux_loss = self.model(input_ids, attention_mask, past_key_values, use_cache,
                                           position_ids, cu_seqlens)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(h[:, keep, :])
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return CausalLMOutput(logits=logits, loss=loss, aux_loss=aux_loss, past_key_values=presents)

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0, do_sample: bool = True,
                 eos_token_id: int | None = None, use_cache: bool = True,
                 attention_mask: torch.Tensor | None = None, streamer=None) -> torch.Tensor:
        """Autoregressive decoding; returns prompt + generated ids, (B, T + new).

        Greedy when do_sample=False or temperature == 0. Rows that emitted eos keep emitting eos
        until every row has. Stops early at max_position_embeddings. `streamer` follows the
        transformers protocol: put(prompt ids), put(each new token column), end().
        Runs in eval mode (restored afterwards): dropout off, no MoE aux loss.
        """
        was_training = self.training
        self.eval()
        try:
            finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            past = None
            if streamer is not None:
                streamer.put(input_ids.cpu())
            for _ in range(max_new_tokens):
                if input_ids.shape[1] >= self.config.max_position_embeddings:
                    break
                past_len = past[0][0].shape[1] if past is not None else 0
                out = self(input_ids[:, past_len:], attention_mask=attention_mask, past_key_values=past,
                           use_cache=use_cache, logits_to_keep=1)
                next_token = sample_next_token(out.logits[:, -1, :], input_ids, temperature, top_k, top_p,
                                               repetition_penalty, do_sample)
                if eos_token_id is not None:
                    next_token = torch.where(finished, torch.full_like(next_token, eos_token_id), next_token)
                input_ids = torch.cat([input_ids, next_token[:, None]], dim=-1)
                if attention_mask is not None:
                    ones = attention_mask.new_ones(attention_mask.shape[0], 1)
                    attention_mask = torch.cat([attention_mask, ones], dim=-1)
                past = out.past_key_values if use_cache else None
                if streamer is not None:
                    streamer.put(next_token[:, None].cpu())
                if eos_token_id is not None:
                    finished |= next_token == eos_token_id
                    if bool(finished.all()):
                        break
            if streamer is not None:
                streamer.end()
            return input_ids
        finally:
            self.train(was_training)


def sample_next_token(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0,
                      top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                      do_sample: bool = True) -> torch.Tensor:
    """One token per row from (B, V) logits.

    Order as upstream: temperature, repetition penalty, top-k, top-p, then sample.
    """
    logits = logits.float().clone()
    greedy = not do_sample or temperature == 0
    if not greedy:
        logits = logits / temperature
    if repetition_penalty != 1.0:
        # CTRL-style: make already-seen tokens less likely (divide positive logits, multiply negative ones)
        seen = logits.gather(1, input_ids)
        penalized = torch.where(seen > 0, seen / repetition_penalty, seen * repetition_penalty)
        logits.scatter_(1, input_ids, penalized)
    if greedy:
        return logits.argmax(dim=-1)
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens before it already cover top_p (the first one always stays)
        drop_sorted = probs.cumsum(dim=-1) - probs > top_p
        drop = drop_sorted.scatter(1, sorted_idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1).squeeze(-1)


# ---------------------------------------------------------------------------------------------
# building, counting
# ---------------------------------------------------------------------------------------------

def build_model(from_weight: str | None = None, **config_fields) -> MiniMindForCausalLM:
    """Hydra `_target_` of conf/model/*.yaml: MiniMindConfig(**fields) -> model [-> load weights]."""
    # choices arrive from the schema as str enums: keep the config plain strings
    config_fields = {k: v.value if isinstance(v, Enum) else v for k, v in config_fields.items()}
    try:
        config = MiniMindConfig(**config_fields)
    except TypeError as err:  # unknown key: say which ones exist
        valid = ", ".join(MiniMindConfig.__dataclass_fields__)
        raise ValueError(f"model config: {err}. Valid model keys: {valid}, from_weight") from None
    config.validate()
    model = MiniMindForCausalLM(config)
    if from_weight:
        from minimind.weights import load_weights

        result = load_weights(model, from_weight)
        total = len(model.state_dict())
        logging.getLogger("minimind").info("model.from_weight: loaded %s (%d of the model's %d tensors)",
                                           from_weight, total - len(result.missing_keys), total)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model behind DDP (.module) and torch.compile (._orig_mod)."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def num_parameters(model: nn.Module) -> int:
    """Distinct parameters (the tied embedding / lm_head matrix once), as upstream reports."""
    return sum(p.numel() for p in model.parameters())


def active_parameters(model: nn.Module) -> int:
    """Parameters one token touches: everything except the routed experts it is not sent to."""
    total = num_parameters(model)
    for module in model.modules():
        if isinstance(module, MoEFeedForward):
            per_expert = num_parameters(module.experts[0])
            total -= per_expert * (module.n_experts - module.top_k)
    return total


def model_summary(model: nn.Module) -> str:
    """One line for the start of a run: 'Model params: 25.83M' (+ active params for MoE)."""
    model = unwrap(model)
    line = f"Model params: {num_parameters(model) / 1e6:.2f}M"
    cfg = getattr(model, "config", None)
    if cfg is not None and cfg.use_moe:
        shared = f" + {cfg.n_shared_experts} shared" if cfg.n_shared_experts else ""
        line += (f", active per token: {active_parameters(model) / 1e6:.2f}M "
                 f"(MoE top-{cfg.num_experts_per_tok} of {cfg.n_routed_experts} experts{shared})")
    return line
