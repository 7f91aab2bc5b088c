"""MiniMindForCausalLM for transformers (trust_remote_code), copied into exported folders.

The network of minimind-hydra's minimind/model.py, restated with nothing but torch and
transformers: pre-norm decoder, RMSNorm in fp32, RoPE (rotate-half) with upstream's YaRN,
grouped-query attention with optional per-head q/k RMSNorm, SwiGLU, optional MoE (softmax
router, top-k, renormalised by family, shared experts added), tied embedding, no biases.
State-dict keys are upstream MiniMind's. The export uses this layout only where no standard
transformers class computes the same function.

Generation recomputes the whole prefix at every token (no KV cache): correct on every
transformers version whatever its cache API, and slow for long outputs; the folders that need
this file hold variants upstream does not publish.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_minimind import MiniMindConfig


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        return (self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps))).type_as(x)


def rope_tables(config, length, device):
    """cos/sin (length, head_dim), halves repeated; YaRN slows the low-frequency pairs."""
    dim, theta = config.head_dim, config.rope_theta
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=device)[: dim // 2].float() / dim))
    factor_out = 1.0
    yarn = config.yarn
    if yarn is not None:
        orig = yarn["original_max_position_embeddings"]

        def dim_of(turns):
            return dim * math.log(orig / (turns * 2 * math.pi)) / (2 * math.log(theta))

        low = max(math.floor(dim_of(yarn["beta_fast"])), 0)
        high = min(math.ceil(dim_of(yarn["beta_slow"])), dim // 2 - 1)
        ramp = ((torch.arange(dim // 2, device=device).float() - low) / max(high - low, 0.001)).clamp(0, 1)
        inv_freq = inv_freq * (1 - ramp + ramp / yarn["factor"])
        factor_out = yarn["attention_factor"]
    angles = torch.outer(torch.arange(length, device=device).float(), inv_freq)
    return torch.cat([angles.cos()] * 2, -1) * factor_out, torch.cat([angles.sin()] * 2, -1) * factor_out


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.n_heads, self.n_kv, self.head_dim = config.num_attention_heads, config.num_key_value_heads, d
        self.q_proj = nn.Linear(h, self.n_heads * d, bias=False)
        self.k_proj = nn.Linear(h, self.n_kv * d, bias=False)
        self.v_proj = nn.Linear(h, self.n_kv * d, bias=False)
        self.o_proj = nn.Linear(self.n_heads * d, h, bias=False)
        if config.qk_norm:
            self.q_norm = RMSNorm(d, config.rms_norm_eps)
            self.k_norm = RMSNorm(d, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = cos[:, None, :], sin[:, None, :]
        q = (q * cos + rotate_half(q) * sin).to(q.dtype)
        k = (k * cos + rotate_half(k) * sin).to(k.dtype)
        rep = self.n_heads // self.n_kv
        q, k, v = q.transpose(1, 2), k.repeat_interleave(rep, dim=2).transpose(1, 2), \
            v.repeat_interleave(rep, dim=2).transpose(1, 2)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # padding: additive -1e9 on padded keys beside the causal -inf, as minimind/model.py
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim) + mask
            out = F.softmax(scores.float(), dim=-1).type_as(q) @ v
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    def __init__(self, config, width):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.down_proj = nn.Linear(width, config.hidden_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, width, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoE(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.top_k, self.renormalize = config.num_experts_per_tok, config.renormalize_topk
        self.gate = nn.Linear(config.hidden_size, config.n_routed_experts, bias=False)
        self.experts = nn.ModuleList(FeedForward(config, config.moe_intermediate_size)
                                     for _ in range(config.n_routed_experts))
        self.shared_experts = nn.ModuleList(FeedForward(config, config.intermediate_size)
                                            for _ in range(config.n_shared_experts)) or None

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        probs = F.softmax(self.gate(flat), dim=-1, dtype=torch.float32)
        weight, idx = torch.topk(probs, k=self.top_k, dim=-1, sorted=False)
        if self.renormalize:
            weight = weight / (weight.sum(dim=-1, keepdim=True) + 1e-20)
        y = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.where(idx == e)
            if rows.numel():
                y.index_add_(0, rows, (expert(flat[rows]) * weight[rows, slot, None]).to(y.dtype))
        y = y.view_as(x)
        for expert in self.shared_experts or ():
            y = y + expert(x)
        return y


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self_attn = Attention(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MoE(config) if config.use_moe else FeedForward(config, config.intermediate_size)

    def forward(self, h, cos, sin, mask):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class MiniMindModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids, attention_mask=None):
        t = input_ids.shape[1]
        if t > self.config.max_position_embeddings:
            raise ValueError(f"{t} positions is longer than max_position_embeddings="
                             f"{self.config.max_position_embeddings}")
        # rows 0..t-1 of the table; whether YaRN applies depends on the table's full length
        # (config.yarn), exactly as in minimind/model.py
        cos, sin = rope_tables(self.config, t, input_ids.device)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            causal = torch.full((t, t), float("-inf"), device=input_ids.device).triu(1)
            mask = causal + (1.0 - attention_mask[:, None, None, :].float()) * -1e9
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(h, cos, sin, mask)
        return self.norm(h)


class MiniMindPreTrainedModel(PreTrainedModel):
    config_class = MiniMindConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


class MiniMindForCausalLM(MiniMindPreTrainedModel, GenerationMixin):
    # transformers 5 names the tied pair as {target: source}, transformers 4 lists the targets
    _tied_weights_keys = ({"lm_head.weight": "model.embed_tokens.weight"}
                          if int(__import__("transformers").__version__.split(".")[0]) >= 5 else ["lm_head.weight"])

    def __init__(self, config):
        super().__init__(config)
        self.model = MiniMindModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    @classmethod
    def _supports_default_dynamic_cache(cls):
        return False  # no KV cache: see the module docstring

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def forward(self, input_ids=None, attention_mask=None, labels=None, logits_to_keep=0, **kwargs):
        h = self.model(input_ids, attention_mask)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(h[:, keep, :])
        loss = None
        if labels is not None:  # next-token cross entropy, -100 ignored (labels unshifted, as HF)
            shifted = logits[:, :-1, :].float()
            loss = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)
