"""MiniMindConfig: the shape of a MiniMind model, as a plain dataclass.

No torch here on purpose: the config layer imports this to validate a composed config, and
``launch.py --help`` / ``--cfg job`` must start without paying for torch.

Field names are the public YAML keys (``conf/model/*.yaml``) and follow upstream
jingyaogong/minimind ``model/model_minimind.py`` where upstream has a name. Two upstream eras
are covered by ``family``:

- ``minimind2`` (commit c090b69): intermediate 64*ceil(int(8h/3)/64), eps 1e-5, MoE with a
  DeepSeek-style gate (4 routed + 1 shared, top-2, sequence-level aux loss, alpha 0.01).
- ``minimind3`` (commit d65ef2c): intermediate 64*ceil(h*pi/64), eps 1e-6, per-head q/k RMSNorm,
  MoE with 4 experts, top-1, token-level aux loss with coefficient 5e-4, no shared expert.
  Upstream calls these ``num_experts`` and ``router_aux_loss_coef``; here they are
  ``n_routed_experts`` and ``aux_loss_alpha`` so both eras share one set of keys.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from minimind.knobs import Choice, knob

SCORING_FUNCS = ("softmax",)

# YaRN settings upstream hard-codes when inference_rope_scaling is on: 2048 * 16 = 32768 tokens.
YARN_SCALING = {
    "type": "yarn",
    "factor": 16,
    "original_max_position_embeddings": 2048,
    "beta_fast": 32,
    "beta_slow": 1,
    "attention_factor": 1.0,
}


class Family(Choice):
    """Which upstream era a model follows (see the module docstring)."""

    minimind2 = "minimind2"
    minimind3 = "minimind3"


FAMILIES = tuple(f.value for f in Family)


@dataclass
class MiniMindConfig:
    family: str = knob("minimind2", "minimind2 | minimind3: intermediate-size formula and MoE router details")
    vocab_size: int | None = knob(6400, "token ids; null = the tokenizer's size (filled in at build time)")
    hidden_size: int = knob(512, "model width; weight files are named <save_weight>_<hidden_size>[_moe].pth")
    num_hidden_layers: int = knob(8, "decoder blocks")
    num_attention_heads: int = knob(8, "query heads")
    num_key_value_heads: int = knob(2, "k/v heads (GQA); must divide num_attention_heads")
    head_dim: int | None = knob(None, "null = hidden_size / num_attention_heads")
    intermediate_size: int | None = knob(None, "SwiGLU width; null = the family's formula "
                                               "(minimind2: 64*ceil(int(8h/3)/64), minimind3: 64*ceil(h*pi/64))")
    max_position_embeddings: int = knob(32768, "RoPE table length = longest prompt + generation")
    rms_norm_eps: float = knob(1e-5, "RMSNorm epsilon")
    rope_theta: float = knob(1e6, "RoPE base")
    inference_rope_scaling: bool = knob(False, "YaRN x16 over 2048 positions, for long-context inference only")
    dropout: float = knob(0.0, "embedding / attention / residual / MLP dropout (upstream trains with 0)")
    flash_attn: bool = knob(True, "SDPA (is_causal) where exact; false = always the masked-softmax path")
    qk_norm: bool = knob(False, "per-head RMSNorm on q and k before RoPE (MiniMind-3)")

    # ---- mixture of experts (ignored unless use_moe) ----
    use_moe: bool = knob(False, "routed SwiGLU experts instead of one MLP per block")
    n_routed_experts: int = knob(4, "MoE: experts the router chooses from")
    num_experts_per_tok: int = knob(2, "MoE: top-k experts per token")
    n_shared_experts: int = knob(1, "MoE: experts every token also passes through")
    scoring_func: str = knob("softmax", "MoE: router scores (upstream supports softmax only)")
    aux_loss_alpha: float = knob(0.01, "MoE: load-balancing loss weight (MiniMind2 0.01, MiniMind-3 5e-4); 0 = off")
    seq_aux: bool = knob(True, "MoE: balance per sequence, then average (MiniMind2); false: over all tokens")
    norm_topk_prob: bool = knob(True, "MoE: renormalise the top-k router weights to sum to 1")
    moe_intermediate_size: int | None = knob(None, "MoE: width of each routed expert; null = intermediate_size")

    # ---- derived values (properties, so an override of hidden_size re-derives them) ----

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads

    @property
    def resolved_intermediate_size(self) -> int:
        if self.intermediate_size is not None:
            return self.intermediate_size
        return default_intermediate_size(self.family, self.hidden_size)

    @property
    def resolved_moe_intermediate_size(self) -> int:
        if self.moe_intermediate_size is not None:
            return self.moe_intermediate_size
        return self.resolved_intermediate_size

    @property
    def rope_scaling(self) -> dict[str, Any] | None:
        """Upstream's rope_scaling dict: YaRN settings when inference_rope_scaling, else None."""
        return dict(YARN_SCALING) if self.inference_rope_scaling else None

    @property
    def param_suffix(self) -> str:
        """Weight-file suffix upstream uses: ``512``, ``640_moe`` (``pretrain_512.pth``)."""
        return f"{self.hidden_size}{'_moe' if self.use_moe else ''}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ---- validation ----

    def validate(self) -> MiniMindConfig:
        """Raise ValueError naming the field, its value and what is valid. Returns self."""

        def bad(field: str, valid: str) -> ValueError:
            return ValueError(f"model.{field}={getattr(self, field)!r} is invalid: {valid}")

        def positive_int(field: str, allow_none: bool = False) -> None:
            value = getattr(self, field)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                extra = " or null" if allow_none else ""
                raise bad(field, f"must be a positive integer{extra}")

        if self.family not in FAMILIES:
            raise bad("family", f"must be one of {', '.join(FAMILIES)}")
        positive_int("vocab_size", allow_none=True)
        for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                      "max_position_embeddings"):
            positive_int(field)
        for field in ("head_dim", "intermediate_size", "moe_intermediate_size"):
            positive_int(field, allow_none=True)

        if self.head_dim is None and self.hidden_size % self.num_attention_heads != 0:
            raise bad("hidden_size", f"must be divisible by num_attention_heads={self.num_attention_heads} "
                                     "(or set head_dim explicitly)")
        if self.resolved_head_dim % 2 != 0:
            raise bad("head_dim" if self.head_dim is not None else "hidden_size",
                      f"gives head_dim={self.resolved_head_dim}; RoPE needs an even head_dim")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise bad("num_key_value_heads",
                      f"must divide num_attention_heads={self.num_attention_heads}")
        if not self.rms_norm_eps > 0:
            raise bad("rms_norm_eps", "must be > 0")
        if not self.rope_theta > 0:
            raise bad("rope_theta", "must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", "must be in [0, 1)")

        if self.use_moe:
            positive_int("n_routed_experts")
            positive_int("num_experts_per_tok")
            if self.num_experts_per_tok > self.n_routed_experts:
                raise bad("num_experts_per_tok",
                          f"must be <= n_routed_experts={self.n_routed_experts}")
            if isinstance(self.n_shared_experts, bool) or not isinstance(self.n_shared_experts, int) \
                    or self.n_shared_experts < 0:
                raise bad("n_shared_experts", "must be an integer >= 0")
            if self.scoring_func not in SCORING_FUNCS:
                raise bad("scoring_func", f"must be one of {', '.join(SCORING_FUNCS)}")
            if not self.aux_loss_alpha >= 0:
                raise bad("aux_loss_alpha", "must be >= 0 (0 disables the load-balancing loss)")
        return self


def default_intermediate_size(family: str, hidden_size: int) -> int:
    """SwiGLU width when intermediate_size is null, as each upstream era computes it."""
    if family == "minimind2":
        # about 8h/3 (same parameter count as a 4h GELU MLP), rounded up to a multiple of 64
        return 64 * math.ceil(int(hidden_size * 8 / 3) / 64)
    if family == "minimind3":
        return 64 * math.ceil(hidden_size * math.pi / 64)
    raise ValueError(f"model.family={family!r} is invalid: must be one of {', '.join(FAMILIES)}")
