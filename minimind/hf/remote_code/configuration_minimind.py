"""MiniMindConfig for transformers: the fields of minimind-hydra's model config (model_type "minimind").

Copied into an exported folder by ``python -m minimind.export``; it needs only transformers.
Field names follow upstream jingyaogong/minimind (MiniMind2 spelling for the MoE keys); the two
upstream eras differ by ``family`` (intermediate-size formula, top-1 renormalisation).
"""

import math

from transformers import PretrainedConfig

YARN = {"factor": 16, "original_max_position_embeddings": 2048, "beta_fast": 32.0, "beta_slow": 1.0,
        "attention_factor": 1.0}


class MiniMindConfig(PretrainedConfig):
    model_type = "minimind"

    def __init__(self, family="minimind2", vocab_size=6400, hidden_size=512, num_hidden_layers=8,
                 num_attention_heads=8, num_key_value_heads=2, head_dim=None, intermediate_size=None,
                 max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=1e6, inference_rope_scaling=False,
                 dropout=0.0, flash_attn=True, qk_norm=False, use_moe=False, n_routed_experts=4,
                 num_experts_per_tok=2, n_shared_experts=1, scoring_func="softmax", aux_loss_alpha=0.01,
                 seq_aux=True, norm_topk_prob=True, moe_intermediate_size=None, tie_word_embeddings=True,
                 **kwargs):
        self.family = family
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        if intermediate_size is None:  # the family's formula, as minimind/model_config.py
            if family == "minimind3":
                intermediate_size = 64 * math.ceil(hidden_size * math.pi / 64)
            else:
                intermediate_size = 64 * math.ceil(int(hidden_size * 8 / 3) / 64)
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.inference_rope_scaling = inference_rope_scaling
        self.dropout = dropout
        self.flash_attn = flash_attn
        self.qk_norm = qk_norm
        self.use_moe = use_moe
        self.n_routed_experts = n_routed_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.n_shared_experts = n_shared_experts
        self.scoring_func = scoring_func
        self.aux_loss_alpha = aux_loss_alpha
        self.seq_aux = seq_aux
        self.norm_topk_prob = norm_topk_prob
        self.moe_intermediate_size = moe_intermediate_size or intermediate_size
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    @property
    def yarn(self):
        """YaRN settings when on and the table is longer than the original length, else None."""
        if self.inference_rope_scaling and self.max_position_embeddings > YARN["original_max_position_embeddings"]:
            return YARN
        return None

    @property
    def renormalize_topk(self) -> bool:
        """MiniMind2 keeps the raw top-1 probability; MiniMind-3 renormalises always."""
        return bool(self.norm_topk_prob and (self.num_experts_per_tok > 1 or self.family == "minimind3"))
