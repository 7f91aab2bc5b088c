"""Benchmark the framework's update step against a hand-written PyTorch loop, in one process.

    python benchmarks/step.py --model tiny --batch-size 16 --seq-len 128 --vocab-size 768
    python benchmarks/step.py --model minimind2_26m --batch-size 4 --seq-len 256 --steps 1 --rounds 80 \
        --idle-threshold 0.1 --wait-idle 120                     # a shared CPU machine
    python benchmarks/step.py --model minimind2_26m --device cuda --precision bf16 --batch-size 16 \
        --seq-len 340 --steps 20 --warmup 10 --rounds 10 --compile
    python benchmarks/step.py --startup         # launch.py --help / --cfg job: wall time, heavy imports

Two paths run on the same initial weights and the same synthetic batches (random token ids,
labels = ids, no padding):

- framework: the real config composed with Hydra (conf/), the Trainer built by
  ``minimind.train.build_trainer`` exactly as ``launch.py`` builds it, made ready with
  ``Trainer.prepare(total_steps)`` and each optimizer step through ``Trainer.step(window)`` (the
  code ``launch.py`` runs per step; no data loading)
- bare: a nanoGPT-style loop on a deep copy of the same model: fused AdamW with the same
  parameter groups, autocast with the same dtype, GradScaler for fp16, mean cross-entropy /
  accum, unscale -> clip -> step -> update -> zero_grad(set_to_none=True). No logging, no syncs.

After each path's warm-up (compile needs it), the two alternate in ``--rounds`` rounds (the
order flips every round so neither always runs on a warmer cache); each round times ``--steps``
optimizer steps per path. Reported per path: ms per optimizer step (median over rounds), tokens/s
(batch * seq * accum / that median), peak memory and, on GPU, MFU; and framework / bare tokens/s.
Also the median of the per-round ratios with a bootstrap 95% CI: each compares two segments run
seconds apart, so it holds up when the machine's speed drifts (a VM with noisy neighbours).
On a CPU shared with other jobs, ``--idle-threshold`` drops the rounds during which other
processes used CPU (from /proc/stat) and ``--wait-idle`` waits for a quiet moment before each
round: one busy neighbour slows a 2-thread OpenMP pool several-fold. GPU timings synchronise the
device only around the timed segments.

Memory: both paths live in the same process, so every figure includes both models and both
optimizers. CPU: the peak resident set (VmHWM) of the process during each path's timed steps,
reset before each (``/proc/self/clear_refs``, which also resets ``ru_maxrss``); where that reset
is unavailable, ``ru_maxrss`` (process-wide, monotone). GPU: ``torch.cuda.max_memory_allocated``,
reset before each path (``probes.MemProbe``).

MFU uses the PaLM convention: FLOPs per token = 6 N + 12 L H Q T (N parameters, L layers, H query
heads, Q head dim, T sequence length) over the device's peak dense bf16 FLOP/s (``PEAK_BF16``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from common import CONF, positive_int
from probes import MemProbe, cpu_name, cpu_snapshot, current_rss_mb, maxrss_mb, other_cpu, wait_for_idle
from startup import format_startup, run_startup

# peak dense bf16 tensor FLOP/s, matched against torch.cuda.get_device_name (first match wins)
PEAK_BF16: List[Tuple[Tuple[str, ...], float]] = [
    (("H200",), 989e12),
    (("H100", "PCIE"), 756e12),
    (("H100", "SXM"), 989e12),
    (("H100", "HBM3"), 989e12),     # the SXM part reports itself as "NVIDIA H100 80GB HBM3"
    (("A100",), 312e12),
    (("L40S",), 362e12),
    (("RTX 4090",), 165e12),
    (("RTX 3090",), 71e12),
]


# ============================================================================ FLOPs and MFU

def flops_per_token(n_params: int, n_layers: int, n_heads: int, head_dim: int, seq_len: int) -> float:
    """Training FLOPs per token, PaLM appendix B: 6 N + 12 L H Q T (forward + backward)."""
    return 6.0 * n_params + 12.0 * n_layers * n_heads * head_dim * seq_len


def peak_flops(device_name: Optional[str]) -> Optional[float]:
    """Peak dense bf16 FLOP/s of a GPU from its name; None when it is not in the table."""
    if not device_name:
        return None
    name = device_name.upper()
    for keys, flops in PEAK_BF16:
        if all(k in name for k in keys):
            return flops
    return None


def mfu(tokens_per_s: float, flops_per_tok: float, peak: Optional[float]) -> Optional[float]:
    """Model FLOPs utilisation: achieved model FLOP/s over the device's peak (None if unknown)."""
    if not peak or not tokens_per_s:
        return None
    return tokens_per_s * flops_per_tok / peak


# ============================================================================ the two paths

def compose_config(overrides: Sequence[str]):
    """The real config (conf/) with ``overrides``, composed as launch.py composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from minimind.config import register_configs

    if not (CONF / "config.yaml").is_file():
        raise SystemExit(f"benchmarks/step.py: no Hydra config at {CONF} (run from a source checkout)")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def framework_overrides(args: argparse.Namespace) -> List[str]:
    clip = "null" if args.grad_clip is None else repr(float(args.grad_clip))
    vocab = "null" if not args.vocab_size else str(args.vocab_size)
    return [
        f"model={args.model}",
        f"precision={args.precision}",
        f"optim.accumulation_steps={args.accum}",
        f"optim.grad_clip={clip}",
        f"data.batch_size={args.batch_size}",
        f"data.max_length={args.seq_len}",
        f"device={args.device}",
        f"loop.compile={str(bool(args.compile)).lower()}",
        f"model.vocab_size={vocab}",
        "loop.progress=false",
        "loop.log_interval=1000000",   # no logging inside the timed steps (the bare loop has none)
        "loop.save_interval=1000000",
        "loop.resume=never",
    ] + list(args.override or [])


def make_windows(n: int, accum: int, batch: int, seq: int, vocab: int, pin: bool, seed: int = 1234):
    """``n`` windows of ``accum`` (input_ids, labels) CPU micro-batches: random ids, labels = ids."""
    import torch

    g = torch.Generator().manual_seed(seed)
    windows = []
    for _ in range(n):
        window = []
        for _ in range(accum):
            x = torch.randint(0, vocab, (batch, seq), generator=g, dtype=torch.long)
            y = x.clone()
            if pin:
                x, y = x.pin_memory(), y.pin_memory()
            window.append((x, y))
        windows.append(window)
    return windows


class BareLoop:
    """The hand-written reference: what one would type without a framework."""

    def __init__(self, model, cfg, device, dtype, compile: bool, grad_clip: Optional[float], accum: int):
        import torch

        from minimind.optim import param_groups

        self.model = model
        self.fwd = torch.compile(model) if compile else model
        self.device, self.dtype, self.accum, self.grad_clip = device, dtype, accum, grad_clip
        self.params = [p for p in model.parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            param_groups(model, o.weight_decay, o.decay_all_params), lr=o.lr,
            betas=tuple(o.optimizer.betas), eps=o.optimizer.eps, weight_decay=o.weight_decay,
            fused=True)
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.autocast = torch.autocast(device_type=device.type, dtype=dtype,
                                       enabled=dtype != torch.float32)
        self.nb = device.type == "cuda"

    def step(self, window) -> None:
        import torch
        import torch.nn.functional as F

        for x, y in window:
            x, y = x.to(self.device, non_blocking=self.nb), y.to(self.device, non_blocking=self.nb)
            with self.autocast:
                logits = self.fwd(x).logits
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), y[:, 1:].flatten()) / self.accum
            self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def bootstrap_ci(xs: Sequence[float], stat=_median, n: int = 2000, level: float = 0.95,
                 seed: int = 0) -> Tuple[float, float]:
    """Percentile bootstrap confidence interval of ``stat`` over ``xs`` (rounds resampled)."""
    import random

    rng = random.Random(seed)
    xs = list(xs)
    stats = sorted(stat([rng.choice(xs) for _ in xs]) for _ in range(n))
    lo = stats[int((1 - level) / 2 * (n - 1))]
    hi = stats[int((1 + level) / 2 * (n - 1))]
    return lo, hi


def run_benchmark(args: argparse.Namespace) -> Dict[str, Any]:
    import copy

    import torch

    from minimind.model import num_parameters
    from minimind.precision import _DTYPES
    from minimind.train import build_trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose_config(framework_overrides(args))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="minimind-bench-") as run_dir:
        trainer = build_trainer(cfg, run_dir)
        try:
            device = trainer.device
            dtype = _DTYPES[cfg.precision.dtype]
            model_cfg = trainer.raw_model.config
            # a separate copy of the same initial weights (the tied embedding stays tied)
            bare_model = copy.deepcopy(trainer.raw_model)
            bare = BareLoop(bare_model, cfg, device, dtype, bool(args.compile), cfg.optim.grad_clip,
                            args.accum)
            total = args.warmup + args.rounds * args.steps
            trainer.prepare(total)  # the LR schedule for a run of this length, as fit() builds it
            bare_model.train()
            windows = make_windows(min(max(args.steps, 1), 8), args.accum, args.batch_size,
                                   args.seq_len, model_cfg.vocab_size, pin=device.type == "cuda")
            cuda = device.type == "cuda"

            def sync() -> None:
                if cuda:
                    torch.cuda.synchronize(device)

            paths = {"framework": trainer.step, "bare": bare.step}
            probe = MemProbe(device)

            # warm-up, each path on its own (compile, allocator, optimizer state)
            t_warm = {}
            for name, fn in paths.items():
                t0 = time.perf_counter()
                for i in range(args.warmup):
                    fn(windows[i % len(windows)])
                sync()
                t_warm[name] = time.perf_counter() - t0

            others: List[Optional[float]] = []
            times: Dict[str, List[float]] = {n: [] for n in paths}
            peak: Dict[str, float] = {n: 0.0 for n in paths}
            rss_now: Dict[str, float] = {n: 0.0 for n in paths}
            waited = 0.0
            for r in range(args.rounds):
                order = ["framework", "bare"] if r % 2 == 0 else ["bare", "framework"]
                if args.wait_idle > 0:
                    waited += wait_for_idle(args.idle_threshold, args.wait_idle)
                snap_r = cpu_snapshot()
                for name in order:
                    fn = paths[name]
                    probe.start()
                    sync()
                    t0 = time.perf_counter()
                    for i in range(args.steps):
                        fn(windows[i % len(windows)])
                    sync()
                    times[name].append((time.perf_counter() - t0) / args.steps)
                    peak[name] = max(peak[name], probe.peak_mb())
                    rss_now[name] = max(rss_now[name], current_rss_mb() or 0.0)
                others.append(other_cpu(snap_r, cpu_snapshot()))
            measured = [o for o in others if o is not None]
            # mean over the timed rounds only (not the waits before them)
            other_all = sum(measured) / len(measured) if measured else None
            load_after = os.getloadavg()

            # rounds during which other processes took CPU are dropped from the statistics
            # (--idle-threshold); all of them if that would leave none
            keep = [i for i, o in enumerate(others)
                    if args.idle_threshold is None or o is None or o <= args.idle_threshold]
            if not keep:
                keep = list(range(args.rounds))
            kept = {n: [t[i] for i in keep] for n, t in times.items()}
            tokens_per_step = args.batch_size * args.seq_len * args.accum
            ms = {n: _median(t) * 1e3 for n, t in kept.items()}
            tps = {n: tokens_per_step / (ms[n] / 1e3) for n in paths}
            ratios = [b / f for f, b in zip(kept["framework"], kept["bare"])]
            n_params = num_parameters(trainer.raw_model)
            fpt = flops_per_token(n_params, model_cfg.num_hidden_layers, model_cfg.num_attention_heads,
                                  model_cfg.resolved_head_dim, args.seq_len)
            device_name = torch.cuda.get_device_name(device) if cuda else cpu_name()
            peak_fl = peak_flops(device_name) if cuda else None
            result = {
                "framework_tokens_per_s": tps["framework"],
                "bare_tokens_per_s": tps["bare"],
                "ratio": tps["framework"] / tps["bare"],
                # framework/bare of the two paths' times within each round: pairs measured close in
                # time, so this is robust to the machine's speed drifting between rounds
                "ratio_paired_median": _median(ratios),
                "ratio_paired_ci95": list(bootstrap_ci(ratios)),
                "ratio_per_round": ratios,
                "ratio_min_times": min(kept["bare"]) / min(kept["framework"]),
                "rounds_kept": len(keep),
                "idle_threshold": args.idle_threshold,
                "waited_for_idle_s": waited,
                "framework_ms_per_step": ms["framework"],
                "bare_ms_per_step": ms["bare"],
                "framework_ms_per_step_rounds": [t * 1e3 for t in times["framework"]],
                "bare_ms_per_step_rounds": [t * 1e3 for t in times["bare"]],
                "rounds_kept_index": keep,
                "peak_mem_mb": peak["framework"],
                "bare_peak_mem_mb": peak["bare"],
                "peak_mem_kind": probe.kind,
                "framework_rss_mb": rss_now["framework"] if not cuda else None,
                "bare_rss_mb": rss_now["bare"] if not cuda else None,
                "ru_maxrss_mb": maxrss_mb(),
                "mfu": mfu(tps["framework"], fpt, peak_fl),
                "bare_mfu": mfu(tps["bare"], fpt, peak_fl),
                "flops_per_token": fpt,
                "peak_flops": peak_fl,
                "warmup_s": t_warm,
                "device": str(device),
                "device_name": device_name,
                "threads": torch.get_num_threads(),
                "load_avg_before": list(load_before),
                "load_avg_after": list(load_after),
                # busy cores used by other processes during the timed rounds (0 = machine idle)
                "other_cpu_cores": other_all,
                "other_cpu_cores_kept_max": max((others[i] or 0.0) for i in keep) if others else None,
                "other_cpu_cores_per_round": others,
                "model": args.model,
                "params": n_params,
                "vocab_size": model_cfg.vocab_size,
                "precision": args.precision,
                "batch_size": args.batch_size,
                "seq_len": args.seq_len,
                "accum": args.accum,
                "grad_clip": cfg.optim.grad_clip,
                "compile": bool(args.compile),
                "steps": args.steps,
                "warmup": args.warmup,
                "rounds": args.rounds,
                "fused_adamw": bool(trainer.optimizer.defaults.get("fused")),
                "torch": torch.__version__,
            }
        finally:
            trainer.dist.destroy()
    return result


def format_result(r: Dict[str, Any]) -> str:
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    lines = [
        f"{r['model']} ({r['params'] / 1e6:.2f}M params, vocab {r['vocab_size']}), {r['precision']}, "
        f"batch {r['batch_size']} x seq {r['seq_len']} x accum {r['accum']}, "
        f"compile={r['compile']}, device {r['device']} [{r['device_name']}], torch {r['torch']}",
        f"{r['rounds']} rounds x {r['steps']} steps per path after {r['warmup']} warm-up steps; "
        f"load average {r['load_avg_before'][0]:.2f} -> {r['load_avg_after'][0]:.2f}, "
        f"other processes used {fmt(r['other_cpu_cores'], '.2f')} cores on average during the timed "
        f"rounds; {r['rounds_kept']} of {r['rounds']} rounds kept (max {fmt(r['other_cpu_cores_kept_max'], '.2f')})",
        "",
        f"{'path':<10} {'tokens/s':>12} {'ms/step':>10} {'min..max ms':>17} {'peak MB':>9} {'MFU':>7}",
    ]
    for name in ("framework", "bare"):
        rounds = r[f"{name}_ms_per_step_rounds"]
        peak = r["peak_mem_mb"] if name == "framework" else r["bare_peak_mem_mb"]
        m = r["mfu"] if name == "framework" else r["bare_mfu"]
        lines.append(f"{name:<10} {r[f'{name}_tokens_per_s']:>12,.0f} {r[f'{name}_ms_per_step']:>10.2f} "
                     f"{min(rounds):>8.2f}..{max(rounds):<8.2f} {peak:>9.0f} "
                     f"{'-' if m is None else format(m * 100, '.1f') + '%':>7}")
    rr = r["ratio_per_round"]
    lines += [
        "",
        f"ratio framework/bare (tokens/s): {r['ratio']:.3f}",
        f"paired per round: median {r['ratio_paired_median']:.3f} (95% CI {r['ratio_paired_ci95'][0]:.3f}"
        f"..{r['ratio_paired_ci95'][1]:.3f}), min {min(rr):.3f}, max {max(rr):.3f}",
        f"peak memory: {r['peak_mem_kind']}; both paths share the process (both models + optimizers)",
    ]
    return "\n".join(lines)


# ============================================================================ CLI

def _clip(value: str) -> Optional[float]:
    if value.lower() in ("none", "null", "off"):
        return None
    v = float(value)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"--grad-clip={value}: must be > 0, or none")
    return v


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/step.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="a conf/model name (tiny, minimind2_26m, ...)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch-size", type=positive_int, default=16, help="micro-batch size")
    p.add_argument("--seq-len", type=positive_int, default=128, help="tokens per sample")
    p.add_argument("--accum", type=positive_int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--steps", type=positive_int, default=10, help="timed optimizer steps per path per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps per path first")
    p.add_argument("--rounds", type=positive_int, default=5, help="alternations of the two paths")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the model in both paths")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--grad-clip", type=_clip, default=1.0, help="max grad norm, or none")
    p.add_argument("--vocab-size", type=int, default=6400,
                   help="model.vocab_size (0: the config's, i.e. the tokenizer's for tiny)")
    p.add_argument("--idle-threshold", type=float, default=None, metavar="CORES",
                   help="drop rounds during which other processes used more than CORES cores "
                        "(CPU machines shared with other jobs; default: keep every round)")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="before each round, wait up to S seconds for other processes to stay under "
                        "--idle-threshold (default 0.1 cores) for a second")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's, i.e. the cores)")
    p.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    p.add_argument("--startup", action="store_true",
                   help="only time `launch.py --help` and `--cfg job` (median of 3) and check imports")
    p.add_argument("--override", action="append", metavar="KEY=VALUE",
                   help="extra Hydra override for the framework path (repeatable)")
    args = p.parse_args(argv)
    if args.seq_len < 8:
        p.error("--seq-len must be >= 8 (data.max_length)")
    return args


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.startup:
        result = run_startup()
        print(format_startup(result))
    else:
        result = run_benchmark(args)
        print(format_result(result))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
