"""What one evaluation costs, in training steps of the same run.

    python benchmarks/eval_cost.py                                   # the demo: 256 held out, batch 16
    python benchmarks/eval_cost.py --val-size 1024 --prompts 0 --json out.json
    python benchmarks/eval_cost.py --model minimind2_26m --device cuda --precision bf16 --seq-len 340 \
        --batch-size 32 --val-size 2048

The Trainer and its Evaluator are built by ``minimind.train.build_trainer`` from the real config
(the embedded demo data unless ``--override data.path=...``), exactly as ``launch.py`` builds
them. Timed, alternating in ``--rounds`` rounds so a drifting machine hurts both alike:

- a training step: ``Trainer.step`` on the run's own next window (real data, the loader's
  collate and padding trim; the loader's time is not counted);
- an evaluation's loss: ``Evaluator.compute`` over the held-out set (its own DataLoader included,
  as in a run; ``data.num_workers`` follows the config);
- its samples: ``Evaluator.samples`` (greedy decoding of ``--prompts`` prompts, at most 64 tokens
  each), which only rank 0 does.

Printed: the median milliseconds of each, "one evaluation = N training steps" (loss alone and
with samples) and the cost per held-out batch against a training micro-batch (a forward pass
against forward + backward + optimizer: about 1/3 when compute-bound). CUDA is synchronised
around each timed segment.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

from common import emit, positive_int
from step import compose_config

DEMO_PROMPTS = ["What is the capital of Zorvia?", "What is 12 + 30?", "Spell the word tiger."]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/eval_cost.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="a conf/model name (tiny, minimind2_26m, ...)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=positive_int, default=16, help="micro-batch size (training and eval)")
    p.add_argument("--seq-len", type=positive_int, default=128, help="data.max_length")
    p.add_argument("--accum", type=positive_int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--val-size", type=positive_int, default=256, help="held-out samples (data.val_size)")
    p.add_argument("--prompts", type=int, default=3, help="eval prompts decoded per evaluation (0: none)")
    p.add_argument("--steps", type=positive_int, default=10, help="timed training steps per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps and one evaluation first")
    p.add_argument("--rounds", type=positive_int, default=3, help="alternations of training and evaluation")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--override", action="append", metavar="KEY=VALUE", help="any other config override")
    p.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    return p.parse_args(argv)


def overrides(args: argparse.Namespace) -> List[str]:
    prompts = ",".join(f"'{p}'" for p in (DEMO_PROMPTS * 4)[:args.prompts])
    return [f"model={args.model}", f"precision={args.precision}", f"device={args.device}",
            f"data.batch_size={args.batch_size}", f"data.max_length={args.seq_len}",
            f"optim.accumulation_steps={args.accum}", f"data.val_size={args.val_size}",
            f"loop.eval_prompts=[{prompts}]", "loop.progress=false", "loop.resume=never",
            "loop.log_interval=1000000", "loop.save_interval=1000000"] + list(args.override or [])


def run(args: argparse.Namespace) -> Dict[str, Any]:
    import torch

    from minimind.train import build_trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose_config(overrides(args))
    with tempfile.TemporaryDirectory(prefix="minimind-evalbench-") as run_dir:
        tr = build_trainer(cfg, run_dir)
        try:
            ev, model, cuda = tr.evaluator, tr.raw_model, tr.device.type == "cuda"
            tr.prepare(10**6)
            loader = iter(tr.batches.loader(tr.batches.sampler(0)))

            def windows(n):  # the run's own next windows, fetched before the clock starts
                return [list(itertools.islice(loader, tr.accum)) for _ in range(n)]

            def timed(fn) -> float:
                if cuda:
                    torch.cuda.synchronize(tr.device)
                t0 = time.perf_counter()
                fn()
                if cuda:
                    torch.cuda.synchronize(tr.device)
                return time.perf_counter() - t0

            for w in windows(args.warmup):
                tr.step(w)
            ev.compute(model)
            step_s, loss_s, sample_s = [], [], []
            for _ in range(args.rounds):
                ws = windows(args.steps)
                step_s.append(timed(lambda: [tr.step(w) for w in ws]) / args.steps)
                loss_s.append(timed(lambda: ev.compute(model)))
                sample_s.append(timed(lambda: ev.samples(model)))
            eval_batches = len(ev.shard())
        finally:
            tr.dist.destroy()
    step_ms = statistics.median(step_s) * 1e3
    loss_ms = statistics.median(loss_s) * 1e3
    sample_ms = statistics.median(sample_s) * 1e3
    micro_ms = step_ms / args.accum
    return {
        "device": str(tr.device), "model": args.model, "precision": args.precision, "batch_size": args.batch_size,
        "seq_len": args.seq_len, "accum": args.accum, "val_size": args.val_size, "eval_batches": eval_batches,
        "prompts": args.prompts, "num_threads": torch.get_num_threads(),
        "train_ms_per_step": step_ms, "eval_loss_ms": loss_ms, "eval_samples_ms": sample_ms,
        "eval_ms": loss_ms + sample_ms,
        "eval_steps_equivalent": (loss_ms + sample_ms) / step_ms, "eval_loss_steps_equivalent": loss_ms / step_ms,
        "eval_batch_vs_train_micro_batch": (loss_ms / max(eval_batches, 1)) / micro_ms,
    }


def report(r: Dict[str, Any]) -> str:
    return "\n".join([
        f"{r['model']} {r['precision']} on {r['device']} ({r['num_threads']} threads), batch {r['batch_size']} x "
        f"seq {r['seq_len']}, accum {r['accum']}; held out {r['val_size']} samples = {r['eval_batches']} batches, "
        f"{r['prompts']} prompts",
        f"  training step        {r['train_ms_per_step']:9.1f} ms",
        f"  evaluation: loss     {r['eval_loss_ms']:9.1f} ms   ({r['eval_loss_steps_equivalent']:.2f} training steps)",
        f"  evaluation: samples  {r['eval_samples_ms']:9.1f} ms",
        f"  one evaluation       {r['eval_ms']:9.1f} ms = {r['eval_steps_equivalent']:.2f} training steps",
        f"  per held-out batch   {r['eval_batch_vs_train_micro_batch']:.2f} x a training micro-batch "
        "(forward only vs forward + backward + optimizer)",
    ])


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    return emit(result, report(result), args.json)


if __name__ == "__main__":
    main()
