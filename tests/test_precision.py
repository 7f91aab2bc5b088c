"""Precision on CPU: bf16 / fp16 without native support is said out loud at the start, never a silent 10x."""

from __future__ import annotations

import logging

import pytest
import torch
from omegaconf import OmegaConf

from minimind import precision as P

NO_NATIVE = frozenset({"fpu", "sse2", "avx", "avx2", "fma", "f16c"})  # this machine's kind: AVX2 only


def node(name: str):
    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[name]
    return OmegaConf.create({"name": name, "dtype": dtype, "scaler": {
        "_target_": "torch.amp.GradScaler", "enabled": name == "fp16"}})


@pytest.fixture
def cpu(monkeypatch):
    """Control the CPU's flags and the probe's answer; count the probes."""
    state = {"flags": NO_NATIVE, "factor": 12.3, "probes": []}
    monkeypatch.setattr(P, "cpu_flags", lambda: state["flags"])
    monkeypatch.setattr(P, "cpu_name", lambda: "AMD EPYC")

    def probe(dtype, budget_s=0.4):
        state["probes"].append(dtype)
        return state["factor"]

    monkeypatch.setattr(P, "probe_slowdown", probe)
    return state


@pytest.mark.parametrize("name, dtype, flag", [("bf16", torch.bfloat16, "avx512_bf16"),
                                               ("fp16", torch.float16, "avx512_fp16")])
def test_no_native_support_warns_with_the_measured_cost(cpu, caplog, name, dtype, flag):
    with caplog.at_level(logging.WARNING, logger="minimind"):
        prec = P.build_precision(node(name), torch.device("cpu"))
    assert prec.dtype == dtype
    assert cpu["probes"] == [dtype]
    msg = caplog.text
    assert f"precision={name} on AMD EPYC" in msg and "12.3x its fp32 time" in msg
    assert flag in msg and "Use precision=fp32 on this CPU" in msg


@pytest.mark.parametrize("flags", [{"avx512_bf16"}, {"amx_bf16", "amx_tile"}])
def test_native_flags_mean_no_probe_and_no_warning(cpu, caplog, flags):
    cpu["flags"] = NO_NATIVE | flags
    with caplog.at_level(logging.WARNING, logger="minimind"):
        P.build_precision(node("bf16"), torch.device("cpu"))
    assert cpu["probes"] == [] and "precision=bf16" not in caplog.text


def test_a_fast_probe_means_no_warning(cpu):
    cpu["factor"] = 1.2  # e.g. an ARM core with bf16 instructions: the flags are not x86's
    assert P.cpu_slowdown_warning("bf16", torch.bfloat16) is None
    cpu["factor"] = None  # the probe could not run: say nothing rather than guess
    assert P.cpu_slowdown_warning("bf16", torch.bfloat16) is None
    assert len(cpu["probes"]) == 2


def test_fp32_is_never_probed(cpu, caplog):
    with caplog.at_level(logging.WARNING, logger="minimind"):
        P.build_precision(node("fp32"), torch.device("cpu"))
    assert cpu["probes"] == [] and caplog.text == ""


def test_the_probe_measures_a_ratio_and_is_cached():
    P.probe_slowdown.cache_clear()
    factor = P.probe_slowdown(torch.bfloat16, budget_s=0.05)
    assert factor is None or factor > 0
    assert P.probe_slowdown(torch.bfloat16, budget_s=0.05) == factor  # once per process
    assert P.probe_slowdown.cache_info().hits == 1


def test_cpu_flags_reads_proc_cpuinfo():
    flags = P.cpu_flags()
    assert isinstance(flags, frozenset)
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    if "\nflags" in text or text.startswith("flags"):
        assert "fpu" in flags or "sse2" in flags
