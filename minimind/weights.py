"""Weight files: upstream MiniMind's flat state dicts (.pth) and safetensors, read and written.

Inference weights are a flat state dict with upstream's key names, fp16 on the CPU by
default, in ``{save_weight}_{hidden_size}[_moe].pth``: upstream's ``model.load_state_dict``
reads ours with ``strict=True`` and :func:`load_weights` reads theirs. Writes go through
:func:`minimind.files.atomic_write`, so a kill leaves the old file or the new one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from minimind.errors import UserError
from minimind.files import atomic_write
from minimind.model import unwrap


class WeightsError(UserError, ValueError):
    """A weights file that cannot be read, or that does not fit the model (names the keys)."""


def export_state_dict(model: nn.Module, dtype: torch.dtype | None = torch.float16) -> dict:
    """CPU state dict with upstream keys, both tied names present, floats cast to `dtype` (None: keep)."""
    out = {}
    for name, tensor in unwrap(model).state_dict().items():
        tensor = tensor.detach()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        out[name] = tensor.cpu()
    return out


def weights_filename(save_weight: str, config: Any, ext: str = ".pth") -> str:
    """Upstream's name: f'{save_weight}_{hidden_size}[_moe].pth'.

    `config`: a MiniMindConfig, a model, or a mapping such as the composed cfg.model.
    """
    config = getattr(unwrap(config), "config", config) if isinstance(config, nn.Module) else config
    if isinstance(config, Mapping):
        suffix = f"{config['hidden_size']}{'_moe' if config.get('use_moe') else ''}"
    else:
        suffix = config.param_suffix
    return f"{save_weight}_{suffix}{ext}"


def _format_of(path: str, fmt: str | None) -> str:
    fmt = fmt or ("safetensors" if str(path).endswith(".safetensors") else "pth")
    if fmt not in ("pth", "safetensors"):
        raise ValueError(f"fmt={fmt!r} is invalid: must be 'pth' or 'safetensors'")
    return fmt


def save_weights(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], path: str,
                 fmt: str | None = None, dtype: torch.dtype | None = torch.float16) -> str:
    """Write inference weights atomically (temp file in the same dir, fsync, os.replace).

    fmt: "pth" (torch.save of the state dict, what upstream writes) or "safetensors"; default
    from the file extension. A kill at any moment leaves either the old file or the new one.
    """
    fmt = _format_of(path, fmt)
    if isinstance(model_or_state_dict, nn.Module):
        state = export_state_dict(model_or_state_dict, dtype)
    else:
        state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu()
                 for k, v in model_or_state_dict.items()}
    def write(f):
        if fmt == "safetensors":
            from safetensors.torch import save as st_save

            f.write(st_save(_unshare(state), metadata={"format": "pt"}))
        else:
            torch.save(state, f)

    atomic_write(path, write)
    return path


def _unshare(state: Mapping[str, torch.Tensor]) -> dict:
    """safetensors refuses tensors sharing storage (the tied pair): give each its own contiguous copy."""
    seen, out = set(), {}
    for name, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone().contiguous() if ptr in seen or not tensor.is_contiguous() else tensor
        seen.add(ptr)
    return out


class LoadResult(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_state_dict(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> dict:
    """A flat state dict from a .pth/.safetensors file, a resume dict (its ["model"]) or a mapping."""
    name = "the given state dict"
    obj: Any = source
    if isinstance(source, (str, os.PathLike)):
        name = str(source)
        if os.path.isdir(name):  # a Hugging Face folder (python -m minimind.export, upstream's layout)
            from minimind.hf.tensors import read_folder

            return read_folder(name)[2]
        if not os.path.isfile(name):
            raise WeightsError(f"weights file not found: {name}")
        try:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file
                obj = load_file(name, device="cpu")
            else:
                obj = torch.load(name, map_location="cpu", weights_only=True)
        except Exception as err:  # corrupt, truncated, or pickles more than tensors
            raise WeightsError(f"cannot read weights file {name}: {type(err).__name__}: {err}. "
                               "Expected a state dict saved with torch.save (.pth) or with "
                               "safetensors (.safetensors).") from err
    if isinstance(obj, Mapping) and not _is_state_dict(obj) and _is_state_dict(obj.get("model")):
        obj = obj["model"]  # upstream's *_resume.pth / a training checkpoint: take the model part
    if not _is_state_dict(obj):
        found = (f"a dict with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping)
                 else f"a {type(obj).__name__}")
        raise WeightsError(f"{name} is not a model state dict: found {found}; expected a flat mapping "
                           "of parameter names to tensors (upstream .pth weights), or a dict whose 'model' "
                           "entry is one (upstream *_resume.pth)")
    state = dict(obj)
    for prefix in ("module.", "_orig_mod."):  # saved from a DDP / torch.compile wrapper
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _capped(items: list[str], cap: int = 10) -> str:
    shown = ", ".join(items[:cap])
    return shown + (f", and {len(items) - cap} more" if len(items) > cap else "")


def load_weights(model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor],
                 strict: bool = True) -> LoadResult:
    """Load upstream-format weights into `model` (cast to the model's dtypes).

    Shape mismatches always raise WeightsError; missing/unexpected keys raise when strict. A file
    holding only one of the tied names (lm_head.weight / model.embed_tokens.weight) is accepted.
    """
    name = str(source) if isinstance(source, (str, os.PathLike)) else "the given state dict"
    target = unwrap(model)
    if name != "the given state dict" and os.path.isdir(name) and getattr(target, "config", None) is not None:
        from minimind.hf.spec import check_against

        check_against(name, target.config.to_dict())  # config.json vs this model, field by field
    state = read_state_dict(source)
    own = target.state_dict()
    tied = ("lm_head.weight", "model.embed_tokens.weight")
    for a, b in (tied, tied[::-1]):
        if a in own and b in own and a not in state and b in state:
            state[a] = state[b]

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if mismatched or (strict and (missing or unexpected)):
        lines = [f"weights in {name} do not fit this model"]
        cfg = getattr(target, "config", None)
        if cfg is not None:
            lines[0] += (f" (hidden_size={cfg.hidden_size}, num_hidden_layers={cfg.num_hidden_layers}, "
                         f"vocab_size={cfg.vocab_size}, use_moe={cfg.use_moe}, qk_norm={cfg.qk_norm})")
        if mismatched:
            lines.append(f"  shape mismatches: {_capped(mismatched)}")
        if missing:
            lines.append(f"  missing keys (in the model, not in the file): {_capped(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys (in the file, not in the model): {_capped(unexpected)}")
        lines.append("  check that the model config (hidden_size, num_hidden_layers, use_moe, qk_norm, "
                     "vocab_size) is the one the weights were trained with")
        raise WeightsError("\n".join(lines))

    state = {k: v.to(own[k].dtype) for k, v in state.items() if k in own}
    target.load_state_dict(state, strict=False)
    return LoadResult(missing, unexpected)
