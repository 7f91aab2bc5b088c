"""A MiniMind config in Hugging Face terms: the class, its config.json, and the way back (no torch).

Which transformers class computes the same function as our model (checked against the modeling
code of transformers 5.24; tests/test_export.py proves each by equal logits and equal greedy
generation):

    dense, q/k norm                    Qwen3ForCausalLM      per-head RMSNorm on q and k before
                                                             RoPE, as MiniMind-3
    dense, no q/k norm                 LlamaForCausalLM      MiniMind2
    MoE, q/k norm, no shared expert    Qwen3MoeForCausalLM   softmax -> top-k -> renormalise if
                                                             norm_topk_prob (MiniMind-3 MoE)
    MoE, no q/k norm, top-k weights    GraniteMoeSharedForCausalLM (MiniMind2 MoE). Its router is
    renormalised                       a softmax over the top-k logits, which is softmax -> top-k
                                       -> renormalise exactly; its shared MLP is one SwiGLU of
                                       n_shared x intermediate width, which is the sum of n_shared
                                       SwiGLUs; its four multipliers are set to identities.
    anything else                      MiniMindForCausalLM with modeling code in the folder

What has no standard class, and why: shared experts beside q/k norm (Qwen3-MoE has no shared
expert; Qwen2-MoE gates its shared expert by a sigmoid), MoE without renormalised top-k weights
(MiniMind2 with top-1 keeps the raw probability; Granite and Mixtral always renormalise), and a
YaRN table that transformers would clamp differently (see :func:`_yarn_is_standard`).

Import reads config.json back into MiniMind fields (:func:`implied_fields`) for these classes and
for upstream's own ``MiniMindForCausalLM`` folders (both eras' key names), and
:func:`mismatches` names each field that differs from the chosen ``model=``, with the override
that fixes it. Our config.json also carries a ``minimind`` block (our fields, verbatim), which
resolves what a standard config cannot say (how many shared experts a Granite shared MLP was).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields
from typing import Any

from minimind.errors import ConfigError
from minimind.model_config import YARN_SCALING, MiniMindConfig

LLAMA, QWEN3, QWEN3_MOE, GRANITE_MOE, MINIMIND = (
    "LlamaForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "GraniteMoeSharedForCausalLM",
    "MiniMindForCausalLM")
MODEL_TYPES = {LLAMA: "llama", QWEN3: "qwen3", QWEN3_MOE: "qwen3_moe", GRANITE_MOE: "granitemoeshared",
               MINIMIND: "minimind"}
ARCH_OF_TYPE = {v: k for k, v in MODEL_TYPES.items()}
# the folder's remote code, named in config.json's auto_map (files in minimind/hf/remote_code/)
AUTO_MAP = {"AutoConfig": "configuration_minimind.MiniMindConfig",
            "AutoModelForCausalLM": "modeling_minimind.MiniMindForCausalLM"}


@dataclass(frozen=True)
class Target:
    architecture: str
    reason: str

    @property
    def standard(self) -> bool:
        return self.architecture != MINIMIND

    @property
    def model_type(self) -> str:
        return MODEL_TYPES[self.architecture]


def topk_renormalized(cfg: MiniMindConfig) -> bool:
    """Whether our MoE router renormalises its top-k weights: the rule of model.MoEFeedForward
    (MiniMind2 keeps the raw probability for top-1; tests pin that the two agree)."""
    return bool(cfg.norm_topk_prob and (cfg.num_experts_per_tok > 1 or cfg.family == "minimind3"))


def yarn_active(cfg: MiniMindConfig) -> bool:
    """Our RoPE applies YaRN only when the table is longer than the original length."""
    return bool(cfg.inference_rope_scaling
                and cfg.max_position_embeddings > YARN_SCALING["original_max_position_embeddings"])


def _yarn_is_standard(cfg: MiniMindConfig) -> bool:
    """transformers clamps YaRN's upper ramp index at head_dim - 1, upstream (and we) at
    head_dim / 2 - 1; the tables agree when neither clamp bites (any usual head_dim and theta)."""
    head_dim, s = cfg.resolved_head_dim, YARN_SCALING

    def dim_of(turns: float) -> float:
        return head_dim * math.log(s["original_max_position_embeddings"] / (turns * 2 * math.pi)) / (
            2 * math.log(cfg.rope_theta))

    low, high = max(math.floor(dim_of(s["beta_fast"])), 0), math.ceil(dim_of(s["beta_slow"]))
    return low <= high <= head_dim // 2 - 1


def choose(cfg: MiniMindConfig, force_minimind: bool = False) -> Target:
    """The class a folder for ``cfg`` declares, and why (the model card says it)."""
    if force_minimind:
        return Target(MINIMIND, "asked for (--arch minimind): upstream's MiniMind layout, remote code")
    if yarn_active(cfg) and not _yarn_is_standard(cfg):
        return Target(MINIMIND, "its YaRN ramp ends past head_dim/2, where transformers' YaRN clamps "
                                "differently; no standard class computes the same RoPE")
    if not cfg.use_moe:
        if cfg.qk_norm:
            return Target(QWEN3, "dense with per-head q/k RMSNorm: Qwen3's decoder layer, exactly")
        if cfg.hidden_size % cfg.num_attention_heads:
            return Target(MINIMIND, "LlamaConfig refuses hidden_size not divisible by the heads")
        return Target(LLAMA, "dense without q/k norm: Llama's decoder layer, exactly")
    if cfg.qk_norm:
        if cfg.n_shared_experts:
            return Target(MINIMIND, "MoE with q/k norm and shared experts: Qwen3-MoE has no shared "
                                    "expert and Qwen2-MoE gates its shared expert by a sigmoid")
        return Target(QWEN3_MOE, "MoE with q/k norm, no shared expert: Qwen3-MoE's router is softmax "
                                 "-> top-k -> renormalise (norm_topk_prob), as ours")
    if not topk_renormalized(cfg):
        return Target(MINIMIND, "MoE whose top-k weights are not renormalised (MiniMind2 with top-1, or "
                                "norm_topk_prob=false): Granite-MoE and Mixtral always renormalise")
    return Target(GRANITE_MOE, "MoE without q/k norm, top-k renormalised: Granite-MoE's softmax over the "
                               "top-k logits equals softmax -> top-k -> renormalise, its shared MLP is our "
                               f"{cfg.n_shared_experts} shared expert(s) side by side, multipliers 1")


# --------------------------------------------------------------------------- config.json out


def hf_config(cfg: MiniMindConfig, target: Target, *, bos: int | None, eos: int | None, pad: int | None,
              dtype: str) -> dict:
    """config.json for ``target``: the class's own keys, the rope settings in the legacy spelling
    (rope_theta + rope_scaling) that transformers 4 and 5, vLLM and llama.cpp all read, and our
    fields in a ``minimind`` block."""
    out: dict[str, Any] = {
        "architectures": [target.architecture],
        "model_type": target.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.resolved_intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.resolved_head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": target.standard,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "torch_dtype": dtype,
    }
    if yarn_active(cfg):
        s = YARN_SCALING
        out["rope_scaling"] = {"rope_type": "yarn", "factor": float(s["factor"]),
                               "original_max_position_embeddings": s["original_max_position_embeddings"],
                               "beta_fast": float(s["beta_fast"]), "beta_slow": float(s["beta_slow"]),
                               "attention_factor": float(s["attention_factor"])}
    arch = target.architecture
    if arch == LLAMA:
        out.update(mlp_bias=False, pretraining_tp=1)
    elif arch == QWEN3:
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_hidden_layers)
    elif arch == QWEN3_MOE:
        out.update(use_sliding_window=False, sliding_window=None, decoder_sparse_step=1, mlp_only_layers=[],
                   num_experts=cfg.n_routed_experts, num_experts_per_tok=cfg.num_experts_per_tok,
                   moe_intermediate_size=cfg.resolved_moe_intermediate_size,
                   norm_topk_prob=topk_renormalized(cfg), router_aux_loss_coef=cfg.aux_loss_alpha,
                   output_router_logits=False)
    elif arch == GRANITE_MOE:
        out.update(intermediate_size=cfg.resolved_moe_intermediate_size,  # Granite: the experts' width
                   num_local_experts=cfg.n_routed_experts, num_experts_per_tok=cfg.num_experts_per_tok,
                   shared_intermediate_size=cfg.n_shared_experts * cfg.resolved_intermediate_size,
                   embedding_multiplier=1.0, residual_multiplier=1.0, logits_scaling=1.0,
                   attention_multiplier=cfg.resolved_head_dim ** -0.5,
                   router_aux_loss_coef=cfg.aux_loss_alpha, output_router_logits=False)
    else:
        # our own fields (YaRN is inference_rope_scaling there); rope_scaling would meet
        # transformers 5's deprecated setter in a remote config
        out.update({k: v for k, v in cfg.to_dict().items() if k not in out}, auto_map=dict(AUTO_MAP))
        out["intermediate_size"] = cfg.resolved_intermediate_size
        del out["rope_scaling"]
    out["minimind"] = cfg.to_dict()
    return out


# --------------------------------------------------------------------------- config.json in


def read_config_json(directory: str) -> dict:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        present = sorted(os.listdir(directory))[:8] if os.path.isdir(directory) else []
        raise ConfigError(f"{directory}: no config.json (it holds: {', '.join(present) or 'nothing'}); "
                          "expected a Hugging Face model folder (config.json + model.safetensors or "
                          "pytorch_model.bin), e.g. one written by python -m minimind.export")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}; expected a JSON object") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def architecture_of(cj: dict, where: str) -> str:
    archs = cj.get("architectures") or []
    arch = archs[0] if archs else ARCH_OF_TYPE.get(cj.get("model_type"))
    if arch not in MODEL_TYPES:
        raise ConfigError(f"{where}: architecture {arch or cj.get('model_type')!r} is not one MiniMind can "
                          f"load; valid: {', '.join(MODEL_TYPES)}")
    return arch


def _rope(cj: dict, where: str) -> tuple[float, bool]:
    """(rope_theta, YaRN on) from either spelling; any other scaling is refused."""
    params = cj.get("rope_parameters") if isinstance(cj.get("rope_parameters"), dict) else {}
    theta = cj.get("rope_theta", params.get("rope_theta", 1e4))
    scaling = cj.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    if not scaling:
        return float(theta), False
    kind = scaling.get("rope_type", scaling.get("type"))
    s = YARN_SCALING
    ours = (kind == "yarn" and float(scaling.get("factor", 0)) == s["factor"]
            and scaling.get("original_max_position_embeddings") == s["original_max_position_embeddings"]
            and float(scaling.get("beta_fast") or 32) == s["beta_fast"]
            and float(scaling.get("beta_slow") or 1) == s["beta_slow"]
            and float(scaling.get("attention_factor") or 1.0) == s["attention_factor"])
    if not ours:
        raise ConfigError(f"{where}: rope scaling {scaling} is not MiniMind's (YaRN, factor 16 over 2048 "
                          "positions, beta 32/1, attention_factor 1): our RoPE cannot compute it")
    return float(theta), True


def _require(cj: dict, where: str, key: str, ok, valid: str) -> None:
    if key in cj and not ok(cj[key]):
        raise ConfigError(f"{where}: {key}={cj[key]!r} has no MiniMind equivalent ({valid})")


def implied_fields(cj: dict, where: str) -> dict:
    """The MiniMind fields (model_config.MiniMindConfig) a config.json describes."""
    arch = architecture_of(cj, where)
    ours = cj.get("minimind") if isinstance(cj.get("minimind"), dict) else {}
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads"):
        if not isinstance(cj.get(key), int):
            raise ConfigError(f"{where}: no integer {key!r}; expected a decoder config ({arch})")
    _require(cj, where, "hidden_act", lambda v: v == "silu", "SwiGLU with silu")
    _require(cj, where, "attention_bias", lambda v: not v, "no biases")
    _require(cj, where, "mlp_bias", lambda v: not v, "no biases")
    _require(cj, where, "use_sliding_window", lambda v: not v, "full attention")
    _require(cj, where, "mlp_only_layers", lambda v: not v, "every layer MoE")
    _require(cj, where, "decoder_sparse_step", lambda v: v == 1, "every layer MoE")
    for key in ("embedding_multiplier", "residual_multiplier", "logits_scaling"):
        _require(cj, where, key, lambda v: float(v) == 1.0, "multiplier 1")
    tie_default = arch == MINIMIND  # upstream's MiniMind ties by default, the standard classes do not
    if not cj.get("tie_word_embeddings", tie_default):
        raise ConfigError(f"{where}: tie_word_embeddings is false; MiniMind's lm_head is the embedding "
                          "matrix (one tensor), so an untied head cannot be loaded")
    theta, yarn = _rope(cj, where)
    heads = cj["num_attention_heads"]
    f: dict[str, Any] = {
        "vocab_size": cj.get("vocab_size", 6400), "hidden_size": cj["hidden_size"],
        "num_hidden_layers": cj["num_hidden_layers"], "num_attention_heads": heads,
        "num_key_value_heads": cj.get("num_key_value_heads") or heads,
        "head_dim": cj.get("head_dim") or cj["hidden_size"] // heads,
        "intermediate_size": cj.get("intermediate_size"),
        "max_position_embeddings": cj.get("max_position_embeddings", 32768),
        "rms_norm_eps": float(cj.get("rms_norm_eps", 1e-6)), "rope_theta": theta,
        "inference_rope_scaling": yarn or bool(cj.get("inference_rope_scaling", False)),
        "use_moe": False, "qk_norm": arch in (QWEN3, QWEN3_MOE),
    }
    if arch == GRANITE_MOE:
        want = f["head_dim"] ** -0.5
        if abs(float(cj.get("attention_multiplier", 1.0)) - want) > 1e-6 * want:
            raise ConfigError(f"{where}: attention_multiplier={cj.get('attention_multiplier')} is not "
                              f"1/sqrt(head_dim)={want:.6g}; MiniMind's attention scale is fixed")
        shared_width = int(cj.get("shared_intermediate_size") or 0)
        n_shared = int(ours.get("n_shared_experts", 1 if shared_width else 0))
        top_k = cj.get("num_experts_per_tok", 2)
        f.update(use_moe=True, family="minimind2" if top_k > 1 else "minimind3",  # both renormalise
                 n_routed_experts=cj.get("num_local_experts", 8), num_experts_per_tok=top_k,
                 n_shared_experts=n_shared, norm_topk_prob=True,
                 moe_intermediate_size=cj.get("intermediate_size"),
                 intermediate_size=shared_width // n_shared if n_shared else None,
                 aux_loss_alpha=float(cj.get("router_aux_loss_coef", 0.01)), seq_aux=ours.get("seq_aux", True))
    elif arch == QWEN3_MOE:
        experts = cj.get("num_experts", cj.get("num_local_experts", 128))  # transformers 5 saves the latter
        f.update(use_moe=True, family="minimind3", n_routed_experts=experts,
                 num_experts_per_tok=cj.get("num_experts_per_tok", 8), n_shared_experts=0,
                 norm_topk_prob=bool(cj.get("norm_topk_prob", False)),
                 moe_intermediate_size=cj.get("moe_intermediate_size"),
                 aux_loss_alpha=float(cj.get("router_aux_loss_coef", 5e-4)), seq_aux=False)
    elif arch == MINIMIND:
        f.update(_minimind_fields(cj))
    else:
        f["family"] = "minimind3" if f["qk_norm"] else "minimind2"
    if arch != MINIMIND:  # what the standard config cannot say, kept as it was trained
        for key in ("dropout", "flash_attn", "seq_aux", "aux_loss_alpha"):
            if key in ours:
                f[key] = ours[key]
        # the family decides the aux loss (training only) and, for MoE, the top-1 renormalisation:
        # take the trained one unless it would change what the folder computes
        family = ours.get("family")
        if family in ("minimind2", "minimind3") and (not f["use_moe"] or topk_renormalized(
                config_of(dict(f, family=family))) == topk_renormalized(config_of(f))):
            f["family"] = family
    return f


def _minimind_fields(cj: dict) -> dict:
    """Upstream's MiniMindConfig, either era (MiniMind2 c090b69: n_routed_experts / aux_loss_alpha;
    MiniMind-3 d65ef2c: num_experts / router_aux_loss_coef and always q/k norm), or our export."""
    era3 = "num_experts" in cj or "router_aux_loss_coef" in cj or cj.get("family") == "minimind3"
    family = cj.get("family", "minimind3" if era3 else "minimind2")
    return {
        "family": family, "qk_norm": bool(cj.get("qk_norm", era3)), "use_moe": bool(cj.get("use_moe", False)),
        "n_routed_experts": cj.get("n_routed_experts", cj.get("num_experts", 4)),
        "num_experts_per_tok": cj.get("num_experts_per_tok", 1 if era3 else 2),
        "n_shared_experts": cj.get("n_shared_experts", 0 if era3 else 1),
        "norm_topk_prob": bool(cj.get("norm_topk_prob", True)),
        "moe_intermediate_size": cj.get("moe_intermediate_size"),
        "aux_loss_alpha": float(cj.get("aux_loss_alpha", cj.get("router_aux_loss_coef", 5e-4 if era3 else 0.01))),
        "seq_aux": bool(cj.get("seq_aux", not era3)),
        "dropout": float(cj.get("dropout", 0.0)), "flash_attn": bool(cj.get("flash_attn", True)),
    }


def config_of(fields_: dict) -> MiniMindConfig:
    known = {f.name for f in fields(MiniMindConfig)}
    return MiniMindConfig(**{k: v for k, v in fields_.items() if k in known})


# --------------------------------------------------------------------------- the comparison


def _hydra(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


RAW = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "qk_norm",
       "use_moe", "rms_norm_eps", "rope_theta")
RAW_MOE = ("n_routed_experts", "num_experts_per_tok", "n_shared_experts")


def mismatches(model_fields: dict, implied: dict) -> list[tuple[str, Any, Any, str]]:
    """(what, chosen model's value, the folder's value, the override that fixes it) for every
    difference that changes the function or the parameter shapes. Fields set directly are
    compared first; derived ones (head_dim, widths, YaRN, renormalisation) only on the model
    with those fixes applied, so an override is listed once, where it is needed."""
    a, b = config_of(model_fields), config_of(implied)
    out: list[tuple[str, Any, Any, str]] = []

    def same(mine: Any, theirs: Any) -> bool:
        return math.isclose(mine, theirs, rel_tol=1e-9) if isinstance(mine, float) else mine == theirs

    keys = [k for k in RAW if k != "vocab_size" or a.vocab_size is not None]
    keys += list(RAW_MOE) if b.use_moe else []
    fixed = dict(model_fields)
    for key in keys:
        mine, theirs = getattr(a, key), getattr(b, key)
        if not same(mine, theirs):
            out.append((key, mine, theirs, f"model.{key}={_hydra(theirs)}"))
            fixed[key] = theirs
    a = config_of(fixed)

    def derived(what: str, mine: Any, theirs: Any) -> None:
        if not same(mine, theirs):
            out.append((what, mine, theirs, f"model.{what}={_hydra(theirs)}"))

    derived("head_dim", a.resolved_head_dim, b.resolved_head_dim)
    if not b.use_moe or b.n_shared_experts:
        derived("intermediate_size", a.resolved_intermediate_size, b.resolved_intermediate_size)
    if b.use_moe:
        derived("moe_intermediate_size", a.resolved_moe_intermediate_size, b.resolved_moe_intermediate_size)
        if topk_renormalized(a) != topk_renormalized(b):
            fix = ("model.norm_topk_prob=false" if not topk_renormalized(b) else
                   "model.norm_topk_prob=true" if not a.norm_topk_prob else "model.family=minimind3")
            out.append(("top-k weights renormalised", topk_renormalized(a), topk_renormalized(b), fix))
    if yarn_active(a) != yarn_active(b):
        out.append(("YaRN", yarn_active(a), yarn_active(b), f"model.inference_rope_scaling={_hydra(yarn_active(b))}"))
    return out


def check_against(directory: str, model_fields: dict) -> dict:
    """Refuse (one line) a folder whose config.json differs from the chosen model; return its
    implied fields. ``model_fields``: cfg.model without _target_ / from_weight."""
    cj = read_config_json(directory)
    where = os.path.join(directory, "config.json")
    implied = implied_fields(cj, where)
    diffs = mismatches(model_fields, implied)
    if diffs:
        listed = "; ".join(f"{what}: model {_hydra(mine)}, config.json {_hydra(theirs)}"
                           for what, mine, theirs, _ in diffs)
        fixes = " ".join(dict.fromkeys(fix for *_, fix in diffs))
        raise ConfigError(f"model.from_weight={directory}: its config.json ({architecture_of(cj, where)}) does "
                          f"not fit the chosen model: {listed}. Override: {fixes}")
    return implied
