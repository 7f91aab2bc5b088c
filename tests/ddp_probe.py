"""What the torchrun probe scripts of test_ddp.py and test_dpo.py share: count the gradient
all-reduces of each window of a DDP trainer, then shut down in the order train.run uses.

A probe script (run under torchrun, with this folder on sys.path) calls :func:`run` with its
overrides, its number of windows and how to build window ``w`` for this rank; rank 0 writes the
counts to ``$OUT_DIR/allreduce.json``.
"""

from __future__ import annotations

import json
import os
from typing import Callable, List, Tuple


def _count(overrides: List[str], windows: int, window_of: Callable) -> Tuple[List[int], bool]:
    import torch
    from conftest import compose

    from minimind.train import build_trainer

    tr = build_trainer(compose(overrides + ["dist=ddp", "optim.accumulation_steps=4", "data.batch_size=2",
                                            "dist.bucket_cap_mb=1000"]), os.environ["OUT_DIR"])
    tr.prepare(10)
    calls = []

    def counting_hook(state, bucket):
        calls.append(1)
        fut = torch.futures.Future()
        t = bucket.buffer()
        torch.distributed.all_reduce(t)
        fut.set_result(t / torch.distributed.get_world_size())
        return fut

    tr.update.ddp_model.register_comm_hook(None, counting_hook)
    per_window = []
    for w in range(windows):
        before = len(calls)
        tr.step(window_of(tr.batches.dataset, tr.dist.rank, w))
        per_window.append(len(calls) - before)
    is_main = tr.dist.is_main
    tr.dist.destroy()
    return per_window, is_main


def run(overrides: List[str], windows: int, window_of: Callable) -> None:
    per_window, is_main = _count(overrides, windows, window_of)
    # as train.run does: the DDP model is gone with _count's frame, now the process groups go; left
    # to interpreter exit, gloo's threads are destroyed unjoined ("terminate called without an
    # active exception", a rank aborts)
    from minimind.dist import release_retired

    release_retired()
    if is_main:
        with open(os.path.join(os.environ["OUT_DIR"], "allreduce.json"), "w") as f:
            json.dump(per_window, f)
