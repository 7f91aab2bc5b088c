"""Autocast context and GradScaler for fp32 / bf16 / fp16."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from hydra.utils import instantiate

from minimind.errors import ConfigError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Precision:
    name: str
    dtype: torch.dtype
    device_type: str
    scaler: torch.amp.GradScaler

    def autocast(self):
        """Mixed precision for the forward pass; fp32 runs without autocast at all."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def _check_supported(name: str, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse a dtype the device cannot run, before any model is built."""
    if dtype == torch.float32:
        return
    if device.type == "cuda":
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"precision={name} is not supported by {torch.cuda.get_device_name(device)}"
                              " (no bfloat16): use precision=fp16 or fp32")
        return
    try:  # CPU (and others): ask autocast itself on a tiny matmul
        with torch.autocast(device_type=device.type, dtype=dtype):
            torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
    except Exception as e:  # noqa: BLE001 - any failure means "not supported here"
        raise ConfigError(f"precision={name} is not supported on device {device}: {e}; "
                          "valid here: fp32") from None


def build_precision(cfg, device: torch.device) -> Precision:
    """``cfg`` is the ``precision`` node; its ``scaler`` node builds the GradScaler.

    The scaler is enabled only for fp16 (the YAML says so); bf16 keeps fp32's exponent
    range, so its gradients need no scaling.
    """
    dtype = _DTYPES[cfg.dtype]
    _check_supported(cfg.name, dtype, device)
    scaler = instantiate(cfg.scaler, device=device.type)
    if scaler.is_enabled() and dtype != torch.float16:
        raise ConfigError(f"precision.scaler.enabled=true with precision={cfg.name}: loss scaling is "
                          "only meaningful for fp16")
    return Precision(name=cfg.name, dtype=dtype, device_type=device.type, scaler=scaler)
