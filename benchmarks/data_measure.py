"""What the data benchmark measures: a real training process, the DataLoader, one sample.

``run_training`` runs ``launch.py`` in a subprocess and polls ``/proc`` for the process tree's
memory (main process and DataLoader workers) while it waits for the first metrics line;
``loader_rate`` times a DataLoader built as the Trainer builds it; ``profile_samples`` splits one
``__getitem__`` into its parts. Used by ``data.py`` and its tests.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from common import LAUNCH, ROOT
from probes import process_tree, pss_kb, status_kb

from minimind.data import PretrainDataset, SFTDataset

# ============================================================================ datasets

def dataset_class(kind: str):
    return PretrainDataset if kind == "pretrain" else SFTDataset


def construct(kind: str, path: str, tokenizer: Optional[str], max_length: int, cls=None, **kw):
    t0 = time.perf_counter()
    ds = (cls or dataset_class(kind))(path, tokenizer=tokenizer, max_length=max_length, **kw)
    return ds, time.perf_counter() - t0


# ============================================================================ training process

def run_training(kind: str, path: str, run_dir: str, tokenizer: Optional[str], max_length: int,
                 batch_size: int, workers: int, steps: int = 3, timeout: float = 900.0,
                 interval: float = 0.05, extra: Sequence[str] = ()) -> Dict[str, Any]:
    """One ``launch.py`` run of ``steps`` optimizer steps: time to the loop's start and to the
    first metrics line, peak RSS/PSS of the main process and of the process tree."""
    import resource

    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    metrics = os.path.join(run_dir, "metrics.jsonl")
    events = os.path.join(run_dir, "events.jsonl")
    cmd = [sys.executable, str(LAUNCH), f"data={kind}", f"data.path={path}",
           f"data.tokenizer={tokenizer if tokenizer else 'null'}", f"data.max_length={max_length}",
           f"data.batch_size={batch_size}", f"data.num_workers={workers}", f"loop.max_steps={steps}",
           "loop.log_interval=1", "loop.progress=false", "device=cpu", f"hydra.run.dir={run_dir}", *extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline", WANDB_SILENT="true")
    env.pop("HYDRA_FULL_ERROR", None)
    log_path = os.path.join(run_dir, "bench_stdout.log")
    peak = {"main_rss": 0, "main_hwm": 0, "tree_rss": 0, "tree_pss": 0, "tree_hwm": 0, "procs": 1}
    hwm_by_pid: Dict[int, int] = {}
    t_start = t_first = None
    line_times: List[float] = []
    last_msize = 0
    rusage = None
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
                now = time.perf_counter() - t0
                if pid == proc.pid:
                    rusage = ru
                    proc.returncode = os.waitstatus_to_exitcode(st)
                    break
                tree = process_tree(proc.pid)
                rss_sum = pss_sum = 0
                for p in tree:
                    s = status_kb(p)
                    rss_sum += s.get("VmRSS", 0)
                    if s.get("VmHWM"):
                        hwm_by_pid[p] = max(hwm_by_pid.get(p, 0), s["VmHWM"])
                    if p == proc.pid:
                        peak["main_rss"] = max(peak["main_rss"], s.get("VmRSS", 0))
                        peak["main_hwm"] = max(peak["main_hwm"], s.get("VmHWM", 0))
                    pss = pss_kb(p)
                    pss_sum += pss if pss is not None else s.get("VmRSS", 0)
                peak["tree_rss"] = max(peak["tree_rss"], rss_sum)
                peak["tree_pss"] = max(peak["tree_pss"], pss_sum)
                peak["procs"] = max(peak["procs"], len(tree))
                if t_start is None and os.path.exists(events):
                    try:
                        with open(events) as f:
                            if any('"start"' in line for line in f):
                                t_start = now
                    except OSError:
                        pass
                try:
                    msize = os.path.getsize(metrics)
                except OSError:
                    msize = 0
                if msize != last_msize:
                    last_msize = msize
                    with open(metrics, "rb") as f:
                        n_lines = f.read().count(b"\n")
                    while len(line_times) < n_lines:
                        line_times.append(now)
                    if t_first is None and n_lines:
                        t_first = now
                if now > timeout:
                    proc.kill()
                time.sleep(interval)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    wall = time.perf_counter() - t0
    children_maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    tail = Path(log_path).read_text(errors="replace")[-3000:]
    if proc.returncode != 0:
        raise RuntimeError(f"training run failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    steps = []
    if os.path.exists(metrics):
        with open(metrics) as f:
            steps = [json.loads(line) for line in f if line.strip()]
    # later steps' spacing (batch fetch + compute) estimates how long the first step itself took
    gaps = [b - a for a, b in zip(line_times, line_times[1:])]
    step_s = statistics.median(gaps) if gaps else None
    return {
        "cmd": " ".join(cmd),
        "seconds_to_loop_start": t_start,
        "seconds_to_first_step": t_first,
        "step_seconds": step_s,
        "seconds_to_first_step_start_est": (t_first - step_s) if (t_first is not None and step_s) else None,
        "metrics_line_times": line_times,
        "wall_s": wall,
        "steps_logged": len(steps),
        "peak_main_rss_mb": peak["main_rss"] / 1024,
        "peak_main_hwm_mb": peak["main_hwm"] / 1024,
        "peak_tree_rss_mb": peak["tree_rss"] / 1024,
        "peak_tree_pss_mb": peak["tree_pss"] / 1024,
        "sum_hwm_tree_mb": sum(hwm_by_pid.values()) / 1024,  # upper bound: peaks at different times
        "max_processes": peak["procs"],
        "wait4_maxrss_mb": (rusage.ru_maxrss / 1024) if rusage is not None else None,
        "rusage_children_maxrss_mb": children_maxrss / 1024,
    }


# ============================================================================ loader throughput

def loader_rate(dataset, batch_size: int, workers: int, n_batches: int, warmup: Optional[int] = None,
                seed: int = 42) -> Dict[str, Any]:
    """The DataLoader the Trainer uses (``minimind.data.loader.Batches``); samples/s after a warm-up."""
    from minimind.data.loader import Batches

    batches = Batches(dataset, batch_size=batch_size, num_workers=workers, shuffle=True, seed=seed,
                      trim_padding=True)
    sampler = batches.sampler(0)
    # prefetch_factor (2) batches per worker are queued during the warm-up; drain them first.
    warmup = warmup if warmup is not None else max(2, 2 * workers + 1)
    warmup = min(warmup, max(len(sampler) - 1, 1))
    n_batches = max(1, min(n_batches, len(sampler) - warmup))
    loader = batches.loader(sampler)
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        next(it)
    samples = 0
    tokens = 0
    t1 = time.perf_counter()
    for _ in range(n_batches):
        x, y = next(it)
        samples += x.shape[0]
        tokens += int((y != -100).sum())
    dt = time.perf_counter() - t1
    del it, loader
    sps = samples / dt
    return {"workers": workers, "batch_size": batch_size, "batches": n_batches, "samples": samples,
            "seconds": dt, "first_batch_s": first, "samples_per_s": sps, "batches_per_s": n_batches / dt,
            "samples_per_s_per_worker": sps / max(workers, 1),
            "loss_tokens_per_sample": tokens / max(samples, 1)}


# ============================================================================ per-sample profile

def profile_samples(dataset, kind: str, n: int = 200, seed: int = 0) -> Dict[str, Any]:
    """Where the lazy ``__getitem__`` spends its time (ms per sample, medians over ``n`` lines).
    ``encode`` tokenizes the whole text (what the datasets did before); ``encode_prefix`` is what
    they do: only as much of the text as the kept tokens need (the same ids)."""
    from minimind.data.labels import assistant_label_rows

    rng = random.Random(seed)
    idx = [rng.randrange(len(dataset)) for _ in range(n)]
    tok = dataset.tokenizer
    t: Dict[str, List[float]] = {k: [] for k in ("read", "parse", "render", "encode", "encode_prefix",
                                                 "labels", "getitem")}
    chars, tokens, needed = [], [], []
    limit = dataset.max_length - (2 if kind == "pretrain" and dataset.add_bos_eos else 0)
    special = kind == "sft" or not dataset.add_bos_eos
    for i in idx:
        a = time.perf_counter()
        raw = dataset.index.line(i)
        b = time.perf_counter()
        obj = json.loads(raw.decode("utf-8"))
        c = time.perf_counter()
        text = obj["text"] if kind == "pretrain" else dataset.render(obj["conversations"])
        d = time.perf_counter()
        enc = tok.backend.encode(text, add_special_tokens=special)
        e = time.perf_counter()
        ids = enc.ids
        e1 = time.perf_counter()
        kept = tok.encode_prefix(text, limit, add_special_tokens=special)
        e2 = time.perf_counter()
        assert kept == ids[:limit + 1], f"prefix encoding differs from the full encoding on sample {i}"
        if kind == "sft":
            row = np.full((1, dataset.max_length), tok.pad_token_id, dtype=np.int64)
            row[0, :min(len(ids), dataset.max_length)] = ids[:dataset.max_length]
            f0 = time.perf_counter()
            assistant_label_rows(row, dataset.assistant_start, dataset.assistant_end)
            f1 = time.perf_counter()
            t["labels"].append(f1 - f0)
        g0 = time.perf_counter()
        dataset[i]
        g1 = time.perf_counter()
        t["read"].append(b - a)
        t["parse"].append(c - b)
        t["render"].append(d - c)
        t["encode"].append(e - d)
        t["encode_prefix"].append(e2 - e1)
        t["getitem"].append(g1 - g0)
        chars.append(len(text))
        tokens.append(len(ids))
        # the characters the first `limit` tokens use
        cut = enc.offsets[min(limit, len(ids)) - 1][1] if ids else 0
        needed.append(min(1.0, cut / max(len(text), 1)))
    out = {f"{k}_ms": statistics.median(v) * 1e3 for k, v in t.items() if v}
    out.update({"samples": n, "chars_per_sample": statistics.median(chars),
                "tokens_per_sample_untruncated": statistics.median(tokens),
                "truncated_fraction": sum(x > limit for x in tokens) / n,
                "text_fraction_needed": statistics.median(needed)})
    return out


def check_same(a, b, n: int = 300, seed: int = 1) -> Dict[str, int]:
    """Items of datasets ``a`` and ``b`` compared on ``n`` random indices."""
    import torch

    rng = random.Random(seed)
    bad = 0
    idx = [rng.randrange(len(a)) for _ in range(min(n, len(a)))]
    for i in idx:
        x1, y1 = a[i]
        x2, y2 = b[i]
        if not (torch.equal(x1, x2) and torch.equal(y1, y2)):
            bad += 1
    return {"checked": len(idx), "mismatches": bad}
