"""Autocast context and GradScaler for fp32 / bf16 / fp16, and an honest word about CPUs.

On a CPU, bf16 / fp16 autocast is only fast where the CPU multiplies those types natively
(x86: AVX512-BF16 / AVX512-FP16 or AMX; oneDNN uses them). Elsewhere, e.g. an AVX2-only AMD EPYC,
every matmul is converted and emulated and training runs 5-25x slower than fp32, with nothing
on the screen saying why. :func:`cpu_slowdown_warning` says so at the start of the run: it reads
the CPU's flags, and where they do not show native support it times one small matmul both ways
(well under a second, once per process) and warns with the measured factor.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
import time
from dataclasses import dataclass
from typing import FrozenSet, Optional

import torch
from hydra.utils import instantiate

from minimind.errors import ConfigError

log = logging.getLogger("minimind")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# x86 flags (/proc/cpuinfo) under which oneDNN runs the dtype's matmuls natively
NATIVE_CPU_FLAGS = {torch.bfloat16: ("avx512_bf16", "amx_bf16"), torch.float16: ("avx512_fp16", "amx_fp16")}
SLOWDOWN_WARN = 1.5  # warn when the low-precision matmul takes this many times the fp32 one


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


def cpu_flags() -> FrozenSet[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "this CPU"


@functools.lru_cache(maxsize=None)
def probe_slowdown(dtype: torch.dtype, budget_s: float = 0.4) -> Optional[float]:
    """Time of a (128 x 512) @ (512 x 1024) matmul under CPU autocast to ``dtype`` over its fp32
    time (best of a few runs each, within about ``budget_s``); None if it cannot run."""
    a, b = torch.randn(128, 512), torch.randn(512, 1024)

    def best(enabled: bool) -> float:
        times, t_end = [], time.perf_counter() + budget_s / 2
        for i in range(4):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype, enabled=enabled):
                a @ b
            times.append(time.perf_counter() - t0)
            if i >= 1 and time.perf_counter() > t_end:  # the first run is a warm-up
                break
        return min(times[1:]) if len(times) > 1 else times[0]

    try:
        return best(True) / max(best(False), 1e-9)
    except Exception:  # noqa: BLE001 - a probe must never stop a run
        return None


def cpu_slowdown_warning(name: str, dtype: torch.dtype) -> Optional[str]:
    """The warning for ``precision=name`` on this CPU, or None when it runs natively / fast."""
    if dtype == torch.float32:
        return None
    native = NATIVE_CPU_FLAGS.get(dtype, ())
    if any(flag in cpu_flags() for flag in native):
        return None
    factor = probe_slowdown(dtype)
    if factor is None or factor < SLOWDOWN_WARN:
        return None
    return (f"precision={name} on {cpu_name()}: this CPU has no native {str(dtype).replace('torch.', '')} matmul "
            f"({' / '.join(native) or 'no native support'} not found), so autocast emulates it: a matmul "
            f"took {factor:.1f}x its fp32 time here, and training will be several times slower than "
            f"with precision=fp32. Use precision=fp32 on this CPU ({name} pays off on a GPU, or on a "
            "CPU with AMX / AVX512-BF16)")


def build_precision(cfg, device: torch.device) -> Precision:
    """``cfg`` is the ``precision`` node; its ``scaler`` node builds the GradScaler.

    The scaler is enabled only for fp16 (the YAML says so); bf16 keeps fp32's exponent
    range, so its gradients need no scaling.
    """
    dtype = _DTYPES[cfg.dtype]
    _check_supported(cfg.name, dtype, device)
    if device.type == "cpu":
        warning = cpu_slowdown_warning(cfg.name, dtype)
        if warning:
            log.warning("%s", warning)
    scaler = instantiate(cfg.scaler, device=device.type)
    if scaler.is_enabled() and dtype != torch.float16:
        raise ConfigError(f"precision.scaler.enabled=true with precision={cfg.name}: loss scaling is "
                          "only meaningful for fp16")
    return Precision(name=cfg.name, dtype=dtype, device_type=device.type, scaler=scaler)
