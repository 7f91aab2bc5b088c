"""The GPU matrix: models x precision x eager/compiled x batch x data layout, in one short run.

    python benchmarks/gpu_matrix.py --out gpu_matrix/               # a CUDA machine: the whole matrix
    python benchmarks/gpu_matrix.py --out gpu_matrix/ --budget-s 600 --steps 20
    python benchmarks/gpu_matrix.py --out gpu_matrix/ --models minimind2_26m --modes compiled
    python benchmarks/gpu_matrix.py --dry-run --out /tmp/gm/        # CPU smoke test (tiny models)

Writes ``gpu_matrix.json`` (every number of every cell) and ``gpu_matrix.md`` (the table for
BENCHMARKS.md) into ``--out``, after each cell, so a run cut short keeps what it measured.

Cells (the default matrix, in this order: all eager cells, then the compiled ones, since compile
time dominates): models minimind2_26m, minimind3_64m and one MoE (minimind3_moe_198m); bf16 and
fp16; eager and compiled (``loop.compile=true``); batch 16 x 340 and 32 x 340; and three data
layouts over the *same* samples:

- ``full``: every sample fills its 340 positions, loss on every token (pretraining's shape; the
  26M bf16 16 x 340 cell is the "< 10 ms/step on an H100-class GPU" target); only at batch 16;
- ``padded``: SFT-like samples (lengths log-normal, median 31% of max_length, as
  benchmarks/make_sft.py's spread; the first 30% of each sample is prompt, no loss), right-padded
  and trimmed as the loader does by default (``data.trim_padding``);
- ``packed``: the same samples with ``data.packing=true`` (the loader's PackingCollate; on CUDA
  bf16/fp16 the varlen flash kernel).

Each cell builds the framework's Trainer from the real config (``minimind.train.build_trainer``,
as launch.py does), runs ``--warmup`` steps (the first compile included: reported as
``warmup_s``), then ``--steps`` timed optimizer steps through ``Trainer.step`` on one fixed
window (no data loading), synchronising only around the timed segment. Reported: ms/step,
tokens/s (input positions), loss tokens/s (supervised tokens), MFU (benchmarks/step.py's PaLM
6N + 12LHQT FLOPs per input position with N the *active* parameters, T = the row width, over the
peak dense bf16 FLOP/s of the card, also for fp16 whose tensor-core peak is the same on these
GPUs), and peak memory (``torch.cuda.max_memory_allocated``).

Budget: ``--budget-s`` (default 300 s of wall time for the whole run). A cell starts only when
the time left is more than what a cell of its kind took so far (a compiled cell: its compile
time); the rest are written as "not run (budget)". Steps per cell: ``--steps`` (default 10;
26M at 10 ms/step makes that 0.1 s, so compile and build time are what the budget pays for).

Without CUDA the script refuses (exit 2) unless ``--dry-run``: the same code on the CPU with
tiny dense and MoE models, fp32, small shapes, eager, one step per cell (tests/test_gpu_matrix.py
runs it).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from common import ROOT, positive_int

if str(ROOT) not in sys.path:  # a bare checkout on a GPU machine: minimind/ importable as it is
    sys.path.insert(0, str(ROOT))

from probes import MemProbe  # noqa: E402
from step import compose_config, flops_per_token, mfu, peak_flops  # noqa: E402

MODELS = ["minimind2_26m", "minimind3_64m", "minimind3_moe_198m"]
PRECISIONS = ["bf16", "fp16"]
MODES = ["eager", "compiled"]
BATCHES = [16, 32]
LAYOUTS = ["full", "padded", "packed"]
SEQ = 340
# the CPU smoke test: the same code on tiny shapes
DRY = {"models": ["tiny", "tiny_moe"], "precisions": ["fp32"], "modes": ["eager"], "batches": [2, 4],
       "seq": 32, "steps": 1, "warmup": 1}


def cells(models, precisions, modes, batches, layouts) -> List[Dict[str, Any]]:
    out = []
    for mode in modes:  # eager first: cheap; compiled cells pay their compile time
        for model in models:
            for prec in precisions:
                for batch in batches:
                    for layout in layouts:
                        if layout == "full" and batch != min(batches):
                            continue  # the pretraining shape is measured at the target batch only
                        out.append({"model": model, "precision": prec, "mode": mode, "batch": batch,
                                    "layout": layout})
    return out


def samples(batch: int, seq: int, vocab: int, layout: str, seed: int = 0):
    """``batch`` (input_ids, labels) rows of ``seq``: full rows, or SFT-like lengths (see above)."""
    import torch

    rng = random.Random(seed * 1000 + batch)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    labels = ids.clone()
    if layout == "full":
        return ids, labels
    for i in range(batch):
        n = min(seq, max(16, round(math.exp(rng.gauss(math.log(0.31 * seq), 0.7)))))
        ids[i, n:] = 0
        labels[i, n:] = -100
        labels[i, :max(1, int(0.3 * n))] = -100  # the prompt
    return ids, labels


def collate(trainer, ids, labels):
    """The micro-batch the cell's loader would hand over: through the same collate."""
    items = list(zip(ids.unbind(0), labels.unbind(0)))
    fn = trainer.batches.collate()
    return fn(items) if fn is not None else (ids, labels)


def model_overrides(model: str) -> List[str]:
    if model == "tiny_moe":
        return ["model=tiny", "model.use_moe=true"]
    return [f"model={model}"]


def run_cell(cell: Dict[str, Any], args, run_dir: Path) -> Dict[str, Any]:
    import torch

    from minimind.model import active_parameters, num_parameters
    from minimind.train import build_trainer

    overrides = model_overrides(cell["model"]) + [
        f"precision={cell['precision']}", f"device={args.device}", f"data.batch_size={cell['batch']}",
        f"data.max_length={args.seq}", f"data.packing={str(cell['layout'] == 'packed').lower()}",
        f"loop.compile={str(cell['mode'] == 'compiled').lower()}", f"model.vocab_size={args.vocab_size}",
        "loop.progress=false", "loop.log_interval=1000000", "loop.save_interval=1000000", "loop.resume=never",
    ] + list(args.override or [])
    t_build = time.perf_counter()
    trainer = build_trainer(compose_config(overrides), run_dir)
    try:
        device = trainer.device
        cuda = device.type == "cuda"

        def sync():
            if cuda:
                torch.cuda.synchronize(device)

        trainer.prepare(args.warmup + args.steps)
        ids, labels = samples(cell["batch"], args.seq, min(args.vocab_size, 6400), cell["layout"])
        window = [collate(trainer, ids, labels)]
        if cuda:  # as the loader's pin_memory does
            window = [{k: v.pin_memory() for k, v in b.items()} if isinstance(b, dict)
                      else tuple(t.pin_memory() for t in b) for b in window]
        objective = trainer.update.objective
        inputs, loss_tokens = objective.tokens(window[0]), objective.count(window[0])
        build_s = time.perf_counter() - t_build
        probe = MemProbe(device)
        probe.start()
        sync()
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            trainer.step(window)
        sync()
        warmup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(args.steps):
            trainer.step(window)
        sync()
        step_s = (time.perf_counter() - t0) / args.steps
        loss = float(trainer.metrics.last.loss_sum) / max(loss_tokens, 1)  # after timing: a host read
        model, cfg = trainer.raw_model, trainer.raw_model.config
        rows, width = (window[0]["input_ids"] if isinstance(window[0], dict) else window[0][0]).shape
        fpt = flops_per_token(active_parameters(model), cfg.num_hidden_layers, cfg.num_attention_heads,
                              cfg.resolved_head_dim, int(width))
        name = torch.cuda.get_device_name(device) if cuda else "cpu"
        tps = inputs / step_s
        return dict(cell, status="ok", ms_per_step=step_s * 1e3, tokens_per_s=tps,
                    loss_tokens_per_s=loss_tokens / step_s, mfu=mfu(tps, fpt, peak_flops(name) if cuda else None),
                    peak_mem_mb=probe.peak_mb(), peak_mem_kind=probe.kind, warmup_s=warmup_s, build_s=build_s,
                    inputs_per_step=inputs, loss_tokens_per_step=loss_tokens,
                    rows=int(rows), width=int(width),
                    params=num_parameters(model), active_params=active_parameters(model), flops_per_token=fpt,
                    loss=loss, device_name=name, steps=args.steps, warmup=args.warmup)
    finally:
        trainer.dist.destroy()
        del trainer
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        try:
            torch._dynamo.reset()  # a compiled cell's graphs are not the next cell's
        except Exception:  # noqa: BLE001
            pass


def markdown(results: List[Dict[str, Any]], header: str) -> str:
    lines = [header, "",
             "| model | precision | mode | batch | layout | rows x width | ms/step | tokens/s | loss tokens/s "
             "| MFU | peak MB | warm-up s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        head = f"| {r['model']} | {r['precision']} | {r['mode']} | {r['batch']} x {r.get('seq', SEQ)} | {r['layout']} |"
        if r["status"] != "ok":
            lines.append(f"{head} {r['status']} | | | | | | |")
            continue
        m = "-" if r["mfu"] is None else f"{r['mfu'] * 100:.1f}%"
        lines.append(f"{head} {r['rows']} x {r['width']} | {r['ms_per_step']:.2f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['loss_tokens_per_s']:,.0f} | {m} | {r['peak_mem_mb']:,.0f} | {r['warmup_s']:.1f} |")
    return "\n".join(lines) + "\n"


def run(args) -> Dict[str, Any]:
    import torch

    t_start = time.perf_counter()
    todo = cells(args.models, args.precisions, args.modes, args.batches, args.layouts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = args.device.startswith("cuda")
    env = {"device": args.device, "device_name": torch.cuda.get_device_name(0) if cuda else "cpu (dry run)",
           "torch": torch.__version__, "cuda": torch.version.cuda, "seq": args.seq, "steps": args.steps,
           "warmup": args.warmup, "budget_s": args.budget_s, "dry_run": args.dry_run}
    header = (f"GPU matrix: {env['device_name']}, torch {env['torch']} (CUDA {env['cuda']}), "
              f"{args.steps} timed steps per cell after {args.warmup} warm-up steps")
    results: List[Dict[str, Any]] = []
    longest = {"eager": 0.0, "compiled": 0.0}  # the longest cell of each mode so far
    with tempfile.TemporaryDirectory(prefix="minimind-gpu-matrix-") as tmp:
        for i, cell in enumerate(todo):
            cell = dict(cell, seq=args.seq)
            left = args.budget_s - (time.perf_counter() - t_start)
            if left < longest[cell["mode"]] or left <= 0:
                results.append(dict(cell, status="not run (budget)"))
            else:
                t0 = time.perf_counter()
                try:
                    results.append(run_cell(cell, args, Path(tmp) / f"cell{i}"))
                except Exception as e:  # noqa: BLE001 - one broken cell must not cost the others
                    results.append(dict(cell, status=f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"))
                longest[cell["mode"]] = max(longest[cell["mode"]], time.perf_counter() - t0)
                r = results[-1]
                print(f"[{i + 1}/{len(todo)}] {cell['model']} {cell['precision']} {cell['mode']} "
                      f"{cell['batch']}x{args.seq} {cell['layout']}: " +
                      (f"{r['ms_per_step']:.2f} ms/step, {r['tokens_per_s']:,.0f} tok/s, "
                       f"{r['loss_tokens_per_s']:,.0f} loss tok/s" if r["status"] == "ok" else r["status"]),
                      flush=True)
            report = {"env": env, "wall_s": time.perf_counter() - t_start, "cells": results}
            (out / "gpu_matrix.json").write_text(json.dumps(report, indent=2) + "\n")
            (out / "gpu_matrix.md").write_text(markdown(results, header))
    return report


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/gpu_matrix.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_matrix", help="folder for gpu_matrix.json and gpu_matrix.md")
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--precisions", nargs="+", default=None, choices=["bf16", "fp16", "fp32"])
    p.add_argument("--modes", nargs="+", default=None, choices=MODES)
    p.add_argument("--batches", nargs="+", type=positive_int, default=None)
    p.add_argument("--layouts", nargs="+", default=None, choices=LAYOUTS)
    p.add_argument("--seq", type=positive_int, default=None, help=f"max_length (default {SEQ})")
    p.add_argument("--steps", type=positive_int, default=None, help="timed steps per cell (default 10)")
    p.add_argument("--warmup", type=positive_int, default=None, help="warm-up steps per cell (default 3)")
    p.add_argument("--budget-s", type=float, default=300.0, help="wall-time budget of the whole run")
    p.add_argument("--vocab-size", type=positive_int, default=6400)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dry-run", action="store_true", help="CPU smoke test: tiny models, fp32, small shapes")
    p.add_argument("--override", action="append", metavar="KEY=VALUE", help="extra Hydra override (every cell)")
    args = p.parse_args(argv)
    dry = DRY if args.dry_run else {}
    args.models = args.models or dry.get("models", MODELS)
    args.precisions = args.precisions or dry.get("precisions", PRECISIONS)
    args.modes = args.modes or dry.get("modes", MODES)
    args.batches = args.batches or dry.get("batches", BATCHES)
    args.layouts = args.layouts or LAYOUTS
    args.seq = args.seq or dry.get("seq", SEQ)
    args.steps = args.steps or dry.get("steps", 10)
    args.warmup = args.warmup or dry.get("warmup", 3)
    if args.dry_run:
        args.device = "cpu"
    return args


def main(argv: Optional[Sequence[str]] = None) -> Optional[Dict[str, Any]]:
    args = parse_args(argv)
    import torch

    if not args.dry_run and not (torch.cuda.is_available() and args.device.startswith("cuda")):
        print("benchmarks/gpu_matrix.py: no CUDA device here (torch.cuda.is_available() is "
              f"{torch.cuda.is_available()}, torch {torch.__version__}); run it on a GPU machine, or pass "
              "--dry-run for the CPU smoke test", file=sys.stderr)
        sys.exit(2)
    report = run(args)
    ok = sum(c["status"] == "ok" for c in report["cells"])
    print(f"{ok} of {len(report['cells'])} cells measured in {report['wall_s']:.0f} s; "
          f"wrote {Path(args.out) / 'gpu_matrix.json'} and {Path(args.out) / 'gpu_matrix.md'}")
    return report


if __name__ == "__main__":
    main()
