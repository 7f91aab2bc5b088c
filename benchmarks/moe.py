"""The MoE update step before and after the sync-free dispatch, in one process.

    python benchmarks/moe.py                                   # tiny MoE (demo width), CPU
    python benchmarks/moe.py --model minimind2_moe_145m --batch-size 2 --seq-len 128 --rounds 6
    python benchmarks/moe.py --device cuda --precision bf16 --model minimind3_moe_198m \
        --batch-size 16 --seq-len 340 --rounds 10 --steps 5

One Trainer (built by ``minimind.train.build_trainer``, as launch.py builds it) steps through
``Trainer.step`` on synthetic batches (random ids, labels = ids) with the MoE layers' dispatch
swapped between rounds:

- ``before``: :func:`loop_dispatch`, the per-expert loop the model used until the speed issue
  (``torch.where(topk_idx == e)`` per expert: on a GPU a host sync per expert per layer);
- ``grouped`` / ``dense``: :mod:`minimind.moe`'s two sync-free strategies (``auto`` is what the
  model picks on this device).

Rounds alternate the variants (the order rotates), each round times ``--steps`` optimizer steps
per variant; reported: median ms per step, tokens/s, and each variant's time over ``before``'s.
The weights keep training across variants (the step's cost does not depend on their values).
``loop_dispatch`` is also the reference tests/test_moe.py compares the new dispatch with.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

from common import emit, positive_int
from probes import cpu_name


def loop_dispatch(flat, topk_idx, topk_weight, experts):
    """The dispatch of ``MoEFeedForward.forward`` before the speed issue (commit c6eff10), kept
    verbatim as the reference: one ``torch.where`` (a data-dependent op) per expert."""
    import torch

    y = torch.zeros_like(flat)
    for e, expert in enumerate(experts):
        token_idx, slot = torch.where(topk_idx == e)
        # Run the expert even on an empty slice: its parameters then get (zero) gradients, so
        # DDP, which waits for a gradient of every parameter, does not hang on an idle expert.
        out = expert(flat[token_idx]) * topk_weight[token_idx, slot].unsqueeze(-1)
        y.index_add_(0, token_idx, out.to(y.dtype))
    return y


def variants(names: Sequence[str]):
    from minimind import moe

    table = {
        "before": loop_dispatch,
        "auto": moe.dispatch,
        "grouped": lambda *a: moe.dispatch(*a, how="grouped"),
        "dense": lambda *a: moe.dispatch(*a, how="dense"),
    }
    return {n: table[n] for n in names}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    import torch
    from step import compose_config, make_windows

    import minimind.model as mm
    from minimind import moe
    from minimind.train import build_trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [f"model={args.model}", "model.use_moe=true", f"precision={args.precision}",
                 f"data.batch_size={args.batch_size}", f"data.max_length={args.seq_len}",
                 f"device={args.device}", f"model.vocab_size={args.vocab_size}", "loop.progress=false",
                 "loop.log_interval=1000000", "loop.save_interval=1000000", "loop.resume=never",
                 f"loop.compile={str(args.compile).lower()}"] + list(args.override or [])
    cfg = compose_config(overrides)
    fns = variants(args.variants)
    with tempfile.TemporaryDirectory(prefix="minimind-moe-bench-") as run_dir:
        trainer = build_trainer(cfg, run_dir)
        original = mm.dispatch
        try:
            device = trainer.device
            cuda = device.type == "cuda"
            trainer.prepare(args.warmup * len(fns) + args.rounds * args.steps * len(fns))
            windows = make_windows(2, 1, args.batch_size, args.seq_len, args.vocab_size, pin=cuda)

            def sync():
                if cuda:
                    torch.cuda.synchronize(device)

            def steps(name: str, n: int) -> float:
                mm.dispatch = fns[name]
                sync()
                t0 = time.perf_counter()
                for i in range(n):
                    trainer.step(windows[i % len(windows)])
                sync()
                return (time.perf_counter() - t0) / max(n, 1)

            for name in fns:
                steps(name, args.warmup)
            times: Dict[str, List[float]] = {n: [] for n in fns}
            names = list(fns)
            for r in range(args.rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    times[name].append(steps(name, args.steps))
            # what the model picks by itself on this device (outside autocast: fp32's choice)
            strategy = moe.strategy(torch.zeros(1, cfg.model.hidden_size, device=device),
                                    trainer.raw_model.model.layers[0].mlp.experts)
        finally:
            mm.dispatch = original
            trainer.dist.destroy()
    ms = {n: statistics.median(t) * 1e3 for n, t in times.items()}
    tokens = args.batch_size * args.seq_len
    base = ms.get("before")
    return {
        "model": args.model, "precision": args.precision, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        "threads": torch.get_num_threads(), "batch_size": args.batch_size, "seq_len": args.seq_len,
        "rounds": args.rounds, "steps": args.steps, "compile": bool(args.compile), "auto_strategy": strategy,
        "ms_per_step": ms, "ms_per_step_rounds": {n: [t * 1e3 for t in v] for n, v in times.items()},
        "tokens_per_s": {n: tokens / (v / 1e3) for n, v in ms.items()},
        "time_vs_before": {n: v / base for n, v in ms.items()} if base else None,
        "torch": torch.__version__,
    }


def format_result(r: Dict[str, Any]) -> str:
    lines = [f"{r['model']} (MoE), {r['precision']}, batch {r['batch_size']} x {r['seq_len']}, "
             f"device {r['device']} [{r['device_name']}], {r['threads']} threads, compile={r['compile']}; "
             f"{r['rounds']} rounds x {r['steps']} steps; the model's own choice here: {r['auto_strategy']}",
             f"{'dispatch':<10} {'ms/step':>10} {'tokens/s':>10} {'vs before':>10}"]
    for name, ms in r["ms_per_step"].items():
        rel = r["time_vs_before"][name] if r["time_vs_before"] else None
        lines.append(f"{name:<10} {ms:>10.1f} {r['tokens_per_s'][name]:>10,.0f} "
                     f"{'-' if rel is None else format(rel, '.3f'):>10}")
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/moe.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="a conf/model name; use_moe=true is forced")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--seq-len", type=positive_int, default=128)
    p.add_argument("--vocab-size", type=positive_int, default=6400)
    p.add_argument("--steps", type=positive_int, default=2, help="timed steps per variant per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=positive_int, default=10)
    p.add_argument("--variants", nargs="+", default=["before", "grouped", "dense"],
                   choices=["before", "auto", "grouped", "dense"])
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile (grouped is then not used on CPU)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--override", action="append", metavar="KEY=VALUE", help="extra Hydra override")
    p.add_argument("--json", metavar="PATH")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    return emit(result, format_result(result), args.json)


if __name__ == "__main__":
    main()
