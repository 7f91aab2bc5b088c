"""State dicts between our key names (upstream MiniMind's) and each Hugging Face class's.

Llama, Qwen3, Qwen3-MoE and upstream's MiniMind layout name every tensor as we do (the MoE
experts as ``mlp.experts.<e>.{gate,up,down}_proj.weight``, the Hub's per-expert layout that
transformers 4 and 5, vLLM and llama.cpp all read; transformers 5 stacks them while loading).
Granite-MoE keeps its experts stacked: ``block_sparse_moe.input_linear.weight`` (E, 2I, H) with
each expert's gate rows then up rows, ``output_linear.weight`` (E, H, I), the router as
``block_sparse_moe.router.layer.weight``, and the shared experts as one ``shared_mlp`` whose
input_linear is [all gates; all ups] and whose output_linear is [down_1 | down_2 ...].

The tied embedding: a folder holds ``model.embed_tokens.weight`` only (``tie_word_embeddings``
makes the head); safetensors refuses two names for one tensor (upstream issue #681).
Reading a folder also accepts what transformers 5 writes for MoE classes (stacked
``experts.gate_up_proj`` / ``experts.down_proj``).
"""

from __future__ import annotations

import json
import os
import re

import torch

from minimind.errors import ConfigError
from minimind.hf.spec import GRANITE_MOE, architecture_of, config_of, implied_fields, read_config_json
from minimind.model_config import MiniMindConfig

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def to_hf(state: dict, cfg: MiniMindConfig, architecture: str) -> dict:
    """Our state dict -> the folder's (contiguous tensors, one copy of the tied matrix)."""
    state = dict(state)
    if EMBED not in state and HEAD in state:
        state[EMBED] = state[HEAD]
    state.pop(HEAD, None)
    if architecture == GRANITE_MOE:
        state = _to_granite(state, cfg)
    return {k: v.contiguous() for k, v in state.items()}


def _to_granite(state: dict, cfg: MiniMindConfig) -> dict:
    out = {k: v for k, v in state.items() if ".mlp." not in k}
    for layer in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{layer}.mlp", f"model.layers.{layer}"
        experts = range(cfg.n_routed_experts)
        out[f"{q}.block_sparse_moe.router.layer.weight"] = state[f"{p}.gate.weight"]
        out[f"{q}.block_sparse_moe.input_linear.weight"] = torch.stack(
            [torch.cat([state[f"{p}.experts.{e}.gate_proj.weight"], state[f"{p}.experts.{e}.up_proj.weight"]])
             for e in experts])
        out[f"{q}.block_sparse_moe.output_linear.weight"] = torch.stack(
            [state[f"{p}.experts.{e}.down_proj.weight"] for e in experts])
        shared = range(cfg.n_shared_experts)
        if cfg.n_shared_experts:
            out[f"{q}.shared_mlp.input_linear.weight"] = torch.cat(
                [state[f"{p}.shared_experts.{s}.gate_proj.weight"] for s in shared]
                + [state[f"{p}.shared_experts.{s}.up_proj.weight"] for s in shared])
            out[f"{q}.shared_mlp.output_linear.weight"] = torch.cat(
                [state[f"{p}.shared_experts.{s}.down_proj.weight"] for s in shared], dim=1)
    return out


def from_hf(state: dict, cfg: MiniMindConfig, architecture: str) -> dict:
    """The folder's state dict -> ours (both tied names present)."""
    state = {k: v for k, v in state.items() if not k.endswith(("rotary_emb.inv_freq", "freqs_cos", "freqs_sin"))}
    if architecture == GRANITE_MOE:
        state = _from_granite(state, cfg)
    else:
        state = _unstack_experts(state, "mlp.experts.gate_up_proj", "mlp.experts.down_proj", "mlp")
    if EMBED not in state and HEAD in state:
        state[EMBED] = state[HEAD]
    if HEAD not in state and EMBED in state:
        state[HEAD] = state[EMBED]
    return state


def _unstack_experts(state: dict, gate_up: str, down: str, prefix: str) -> dict:
    """transformers 5's stacked experts (E, 2I, H) / (E, H, I) -> per-expert matrices."""
    out = {}
    for key, value in state.items():
        m = _LAYER.match(key)
        if m and key.endswith(gate_up):
            base = f"model.layers.{m.group(1)}.{prefix}.experts"
            for e, w in enumerate(value):
                gate, up = w.chunk(2, dim=0)
                out[f"{base}.{e}.gate_proj.weight"], out[f"{base}.{e}.up_proj.weight"] = gate, up
        elif m and key.endswith(down):
            base = f"model.layers.{m.group(1)}.{prefix}.experts"
            for e, w in enumerate(value):
                out[f"{base}.{e}.down_proj.weight"] = w
        else:
            out[key] = value
    return out


def _from_granite(state: dict, cfg: MiniMindConfig) -> dict:
    rename = {"block_sparse_moe.router.layer.weight": "mlp.gate.weight",
              "block_sparse_moe.router.weight": "mlp.gate.weight",
              "block_sparse_moe.input_linear.weight": "mlp.experts.gate_up_proj",
              "block_sparse_moe.experts.gate_up_proj": "mlp.experts.gate_up_proj",
              "block_sparse_moe.output_linear.weight": "mlp.experts.down_proj",
              "block_sparse_moe.experts.down_proj": "mlp.experts.down_proj"}
    out = {}
    for key, value in state.items():
        for old, new in rename.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
                break
        m = _LAYER.match(key)
        if m and key.endswith("shared_mlp.input_linear.weight"):
            base, n = f"model.layers.{m.group(1)}.mlp.shared_experts", max(cfg.n_shared_experts, 1)
            gates, ups = value.chunk(2, dim=0)
            for s, (g, u) in enumerate(zip(gates.chunk(n), ups.chunk(n))):
                out[f"{base}.{s}.gate_proj.weight"], out[f"{base}.{s}.up_proj.weight"] = g, u
        elif m and key.endswith("shared_mlp.output_linear.weight"):
            base, n = f"model.layers.{m.group(1)}.mlp.shared_experts", max(cfg.n_shared_experts, 1)
            for s, d in enumerate(value.chunk(n, dim=1)):
                out[f"{base}.{s}.down_proj.weight"] = d
        else:
            out[key] = value
    return _unstack_experts(out, "mlp.experts.gate_up_proj", "mlp.experts.down_proj", "mlp")


# --------------------------------------------------------------------------- the folder's files


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def _load_file(path: str) -> dict:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated, or pickles more than tensors
        raise ConfigError(f"cannot read {path}: {type(err).__name__}: {err}") from err


def read_folder_tensors(directory: str) -> dict:
    """Every tensor of the folder's weight files (one file, or the shards an index names)."""
    for name in WEIGHT_FILES:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        if not name.endswith(".index.json"):
            return _load_file(path)
        with open(path, encoding="utf-8") as f:
            shards = sorted(set(json.load(f).get("weight_map", {}).values()))
        state: dict = {}
        for shard in shards:
            state.update(_load_file(os.path.join(directory, shard)))
        return state
    raise ConfigError(f"{directory} has a config.json but no weights: expected one of {', '.join(WEIGHT_FILES)}")


def read_folder(directory: str) -> tuple[str, dict, dict]:
    """(architecture, implied MiniMind fields, state dict in our key names) of a folder."""
    cj = read_config_json(directory)
    where = os.path.join(directory, "config.json")
    arch = architecture_of(cj, where)
    fields_ = implied_fields(cj, where)
    return arch, fields_, from_hf(read_folder_tensors(directory), config_of(fields_), arch)
