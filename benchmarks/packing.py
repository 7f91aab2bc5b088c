"""Loss tokens per second with and without data.packing, on real data through the real loader.

    python benchmarks/packing.py                                    # the demo (max_length 128)
    python benchmarks/make_sft.py --out /tmp/sft_spread.jsonl       # upstream-like SFT lengths
    python benchmarks/packing.py --data /tmp/sft_spread.jsonl --max-length 512 --packed-batch-size 32
    python benchmarks/packing.py --model minimind2_26m --data /tmp/sft_spread.jsonl --max-length 512 \
        --rounds 4 --idle-threshold 0.1 --wait-idle 120

What counts is the supervised (loss) tokens a second: padding, and in SFT the prompts, cost
compute and teach nothing. Variants, each a Trainer built by ``minimind.train.build_trainer`` from
the real config (conf/) on the same data, model and seed:

- ``unpacked``: today's default, ``data.trim_padding=true`` (the micro-batch's common padding
  tail dropped), ``data.packing=false``;
- ``packed``: ``data.packing=true`` at the same ``--batch-size`` (the same samples per step, in
  fewer rows);
- ``packed-bN`` (``--packed-batch-size N``): packing with more samples per micro-batch, the way
  packing is meant to be used (more samples in the same memory).

Each variant's micro-batches come from its own DataLoader (its collate included: the packing
cost is timed separately and printed). Then the variants alternate in ``--rounds`` rounds
(the order rotates); each round times ``--steps`` optimizer steps per variant through
``Trainer.step``. Reported per variant: median ms/step, input positions and loss tokens per
step, input tokens/s, loss tokens/s; and per-round paired ratios of loss tokens/s against
``unpacked`` (median, bootstrap 95% CI), robust to a machine whose speed drifts.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from common import emit, positive_int
from probes import cpu_name, cpu_snapshot, other_cpu, wait_for_idle


def variant_overrides(args: argparse.Namespace) -> Dict[str, List[str]]:
    data = ["data=demo"] if args.data == "demo" else ["data=sft", f"data.path={args.data}"]
    if args.tokenizer:
        data.append(f"data.tokenizer={args.tokenizer}")
    common = data + [f"model={args.model}", f"precision={args.precision}", f"device={args.device}",
                     f"data.max_length={args.max_length}", "data.num_workers=0", "data.trim_padding=true",
                     "loop.progress=false", "loop.log_interval=1000000", "loop.save_interval=1000000",
                     "loop.resume=never", f"loop.compile={str(args.compile).lower()}"] + list(args.override or [])
    if args.vocab_size:
        common.append(f"model.vocab_size={args.vocab_size}")
    out = {"unpacked": common + ["data.packing=false", f"data.batch_size={args.batch_size}"],
           "packed": common + ["data.packing=true", f"data.batch_size={args.batch_size}"]}
    if args.packed_batch_size:
        out[f"packed-b{args.packed_batch_size}"] = common + ["data.packing=true",
                                                             f"data.batch_size={args.packed_batch_size}"]
    return out


def collect(trainer, n_windows: int):
    """``n_windows`` windows from the trainer's own loader, and the loader's seconds per batch."""
    batches = trainer.batches
    it = iter(batches.loader(batches.sampler(0, 0)))
    t0 = time.perf_counter()
    windows = [list(itertools.islice(it, trainer.accum)) for _ in range(n_windows)]
    per_batch = (time.perf_counter() - t0) / max(1, n_windows * trainer.accum)
    return [w for w in windows if w], per_batch


def run(args: argparse.Namespace) -> Dict[str, Any]:
    import torch
    from step import bootstrap_ci, compose_config

    from minimind.train import build_trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    variants = variant_overrides(args)
    trainers, windows, loader_s = {}, {}, {}
    tmp = tempfile.TemporaryDirectory(prefix="minimind-packing-bench-")
    try:
        for name, overrides in variants.items():
            tr = build_trainer(compose_config(overrides), Path(tmp.name) / name)
            tr.prepare(args.warmup + args.rounds * args.steps)
            trainers[name] = tr
            windows[name], loader_s[name] = collect(tr, args.windows)
        device = next(iter(trainers.values())).device

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def shape(name: str, i: int):
            """(input positions, loss tokens) of window i, counted on the host as the step does."""
            obj = trainers[name].update.objective
            w = windows[name][i]
            return sum(obj.tokens(b) for b in w), sum(obj.count(b) for b in w)

        for name, tr in trainers.items():
            for i in range(args.warmup):
                tr.step(windows[name][i % len(windows[name])])
        sync()
        names = list(trainers)
        per_round: Dict[str, List[Dict[str, float]]] = {n: [] for n in names}
        others = []
        for r in range(args.rounds):
            if args.wait_idle > 0:
                wait_for_idle(args.idle_threshold, args.wait_idle)
            snap = cpu_snapshot()
            for name in names[r % len(names):] + names[:r % len(names)]:
                tr = trainers[name]
                idx = [(r * args.steps + i) % len(windows[name]) for i in range(args.steps)]
                inputs = sum(shape(name, i)[0] for i in idx)
                loss_tokens = sum(shape(name, i)[1] for i in idx)
                sync()
                t0 = time.perf_counter()
                for i in idx:
                    tr.step(windows[name][i])
                sync()
                dt = time.perf_counter() - t0
                per_round[name].append({"s_per_step": dt / args.steps, "inputs": inputs / args.steps,
                                        "loss_tokens": loss_tokens / args.steps})
            others.append(other_cpu(snap, cpu_snapshot()))
        keep = [i for i, o in enumerate(others) if args.idle_threshold is None or o is None or o <= args.idle_threshold]
        keep = keep or list(range(args.rounds))

        def stat(name: str, key: str) -> float:
            rows = [per_round[name][i] for i in keep]
            if key == "loss_tokens_per_s":
                return statistics.median(row["loss_tokens"] / row["s_per_step"] for row in rows)
            if key == "tokens_per_s":
                return statistics.median(row["inputs"] / row["s_per_step"] for row in rows)
            return statistics.median(row[key] for row in rows)

        result = {"variants": {}, "data": args.data, "model": args.model, "max_length": args.max_length,
                  "precision": args.precision, "device": str(device),
                  "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
                  "threads": torch.get_num_threads(), "rounds": args.rounds, "rounds_kept": len(keep),
                  "steps": args.steps, "windows": args.windows, "load_avg_before": list(load_before),
                  "load_avg_after": list(os.getloadavg()), "other_cpu_cores_per_round": others,
                  "torch": torch.__version__}
        base = [per_round["unpacked"][i] for i in keep]
        for name in names:
            tr = trainers[name]
            rows = [per_round[name][i] for i in keep]
            ratios = [(row["loss_tokens"] / row["s_per_step"]) / (b["loss_tokens"] / b["s_per_step"])
                      for row, b in zip(rows, base)]
            result["variants"][name] = {
                "batch_size": tr.batches.batch_size, "packing": tr.batches.packing,
                "ms_per_step": stat(name, "s_per_step") * 1e3,
                "inputs_per_step": stat(name, "inputs"), "loss_tokens_per_step": stat(name, "loss_tokens"),
                "tokens_per_s": stat(name, "tokens_per_s"), "loss_tokens_per_s": stat(name, "loss_tokens_per_s"),
                "loss_share_of_inputs": stat(name, "loss_tokens") / stat(name, "inputs"),
                "loader_ms_per_batch": loader_s[name] * 1e3,
                "loss_tok_s_vs_unpacked": statistics.median(ratios),
                "loss_tok_s_vs_unpacked_ci95": list(bootstrap_ci(ratios)),
                "ms_per_step_rounds": [row["s_per_step"] * 1e3 for row in per_round[name]],
            }
        return result
    finally:
        for tr in trainers.values():
            tr.dist.destroy()
        tmp.cleanup()


def format_result(r: Dict[str, Any]) -> str:
    lines = [f"{r['model']}, {r['precision']}, data {r['data']} at max_length {r['max_length']}, device "
             f"{r['device']} [{r['device_name']}], {r['threads']} threads, torch {r['torch']}",
             f"{r['rounds_kept']} of {r['rounds']} rounds kept x {r['steps']} steps per variant; load "
             f"{r['load_avg_before'][0]:.2f} -> {r['load_avg_after'][0]:.2f}",
             "",
             f"{'variant':<14} {'batch':>5} {'ms/step':>9} {'inputs/step':>11} {'loss tok/step':>13} "
             f"{'loss share':>10} {'tok/s':>9} {'loss tok/s':>10} {'vs unpacked (95% CI)':>24} {'loader ms':>9}"]
    for name, v in r["variants"].items():
        lo, hi = v["loss_tok_s_vs_unpacked_ci95"]
        lines.append(f"{name:<14} {v['batch_size']:>5} {v['ms_per_step']:>9.1f} {v['inputs_per_step']:>11.0f} "
                     f"{v['loss_tokens_per_step']:>13.0f} {v['loss_share_of_inputs']:>10.1%} "
                     f"{v['tokens_per_s']:>9,.0f} {v['loss_tokens_per_s']:>10,.0f} "
                     f"{v['loss_tok_s_vs_unpacked']:>8.2f}x ({lo:.2f}..{hi:.2f}) {v['loader_ms_per_batch']:>9.2f}")
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/packing.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="demo", help="demo, or the path of an SFT JSONL file")
    p.add_argument("--tokenizer", default=None, help="data.tokenizer (default: the config's)")
    p.add_argument("--model", default="tiny")
    p.add_argument("--vocab-size", type=int, default=0, help="model.vocab_size (0: the tokenizer's)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--max-length", type=positive_int, default=128)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--packed-batch-size", type=int, default=0, help="also packing with this batch size")
    p.add_argument("--windows", type=positive_int, default=8, help="distinct windows per variant")
    p.add_argument("--steps", type=positive_int, default=2, help="timed steps per variant per round")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=positive_int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--idle-threshold", type=float, default=None, metavar="CORES")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S")
    p.add_argument("--override", action="append", metavar="KEY=VALUE", help="extra Hydra override (all variants)")
    p.add_argument("--json", metavar="PATH")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    return emit(result, format_result(result), args.json)


if __name__ == "__main__":
    main()
