"""The performance contract of the update step (DESIGN.md, "Performance contract"), on CPU.

"No host sync per step" cannot be timed on a CPU, so it is checked by what ``train_step`` does:
it must never read a value computed on the run's device back to the host (``.item()``,
``.tolist()``, ``.cpu()``, ``bool()``, ``float()``, ``int()``, ``.numpy()``, nor an op whose
output size depends on device data, such as ``nonzero``). On a GPU each of those waits for every
queued kernel; they belong at log / save time only.

On a CPU every tensor is "on the device", so the tests tell device values from host values by
where they come from, not where they live. The loop legitimately reads the *host copies* of the
labels (trimming padding and counting the loss tokens of the window before moving anything to the
device). So, while ``train_step`` runs:

- the window's tensors (what the DataLoader hands over) are marked "host";
- a ``TorchDispatchMode`` marks every op output "host" exactly when all its tensor inputs are host;
  everything else (parameters, gradients, optimizer state, the loop's accumulators, fresh
  factory tensors, anything computed from them) counts as a device value;
- ``Tensor.to(device)`` / ``.cuda()`` return a device value even where the move is a no-op on CPU
  (an alias, marked "device"), so reading the moved labels counts, as it would sync on a GPU;
- the host-read methods are wrapped (Python level, so ``.cpu()`` / ``.tolist()`` on CPU, which
  dispatch no op, are seen too) and ``aten._local_scalar_dense`` / ``nonzero`` / ``masked_select``
  / ``unique`` are watched at dispatch level; a read of a device value is recorded with its call
  site.

This is stricter than "count reads of tensors that require grad": it also catches a read of a
loop accumulator, of the grad norm, or of the labels after ``.to(device)``.
"""

from __future__ import annotations

import itertools
import traceback
from typing import List

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from minimind.train import build_trainer

QUIET = ["loop.log_interval=1000", "loop.save_interval=1000"]
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
SYNCING_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2",
               "unique_dim", "unique_consecutive"}
_MARK = "_perf_test_host"


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these tests count calls, not time, and a 2-thread OpenMP pool on a
    busy 2-core machine spins ~10x slower (the whole file stays a few seconds)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _is_host(t: torch.Tensor) -> bool:
    return bool(getattr(t, _MARK, False))


def _set_host(t: torch.Tensor, value: bool) -> None:
    try:
        setattr(t, _MARK, value)
    except (AttributeError, RuntimeError):  # a tensor type without __dict__: leave it "device"
        pass


def _site() -> str:
    """The innermost frame outside this file and torch's Python internals."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if frame.filename != __file__ and "/torch/" not in frame.filename:
            return f"{frame.filename}:{frame.lineno} {frame.line}"
    return "?"


class HostReadWatch(TorchDispatchMode):
    """Propagates the host mark and records device -> host reads (see the module docstring)."""

    def __init__(self, run_device: torch.device):
        super().__init__()
        self.run_device = run_device
        self.reads: List[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        host = bool(inputs) and all(_is_host(a) for a in inputs)
        name = func.overloadpacket.__name__
        if name in SYNCING_OPS and not host:
            self.reads.append(f"aten.{name} on a device value at {_site()}")
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                _set_host(t, host)
        return out

    def record(self, what: str, t: torch.Tensor) -> None:
        if not _is_host(t):
            self.reads.append(f"Tensor.{what} on a device value {tuple(t.shape)} {t.dtype} at {_site()}")


def _moves_to_device(args, kwargs) -> bool:
    target = kwargs.get("device", args[0] if args else None)
    return isinstance(target, (torch.device, str)) or (isinstance(target, torch.Tensor)
                                                        and not _is_host(target))


def watch_train_steps(monkeypatch, trainer, windows) -> List[str]:
    """Run ``trainer.train_step`` on ``windows`` under the watch; returns the recorded reads."""
    watch = HostReadWatch(trainer.device)
    for window in windows:
        for batch in window:  # (input_ids, labels), or a dict (a packed batch: + position_ids, cu_seqlens)
            for t in (batch.values() if isinstance(batch, dict) else batch):
                _set_host(t, True)

    with monkeypatch.context() as m:
        for name in HOST_READS:
            original = getattr(torch.Tensor, name)

            def wrapped(self, *a, __name=name, __orig=original, **k):
                watch.record(__name, self)
                return __orig(self, *a, **k)

            m.setattr(torch.Tensor, name, wrapped)

        for name in ("to", "cuda"):
            original = getattr(torch.Tensor, name)

            def moved(self, *a, __name=name, __orig=original, **k):
                out = __orig(self, *a, **k)
                if __name == "cuda" or _moves_to_device(a, k):
                    if out is self:  # a no-op on CPU: give the "device copy" its own identity
                        out = out.view_as(out)
                    _set_host(out, False)
                return out

            m.setattr(torch.Tensor, name, moved)

        with watch:
            for window in windows:
                trainer.step(window)
    return watch.reads


def make_trainer(cfg_factory, tmp_path, *overrides):
    cfg = cfg_factory(list(QUIET) + list(overrides))
    trainer = build_trainer(cfg, tmp_path)
    trainer.prepare(100)  # as fit() does
    return trainer


def real_windows(trainer, count: int):
    """Windows from the run's own DataLoader (demo SFT data: padded, -100 in the labels)."""
    batches = iter(trainer.batches.loader(trainer.batches.sampler(0, 0)))
    windows = [list(itertools.islice(batches, trainer.accum)) for _ in range(count)]
    assert all(len(w) == trainer.accum for w in windows)
    return windows


@pytest.mark.parametrize("overrides", [
    pytest.param([], id="fp32-default"),
    pytest.param(["optim.accumulation_steps=2"], id="fp32-accum2"),
    pytest.param(["precision=fp16"], id="fp16"),
    pytest.param(["optim.grad_clip=null"], id="fp32-noclip"),
    pytest.param(["optim.loss_normalization=micro_batch", "optim.accumulation_steps=2"],
                 id="fp32-micro_batch"),
    # MoE: the routed experts are dispatched without a per-expert torch.where (minimind/moe.py)
    pytest.param(["model.use_moe=true"], id="moe-minimind2-top2"),
    pytest.param(["model.use_moe=true", "model.family=minimind3", "model.qk_norm=true",
                  "model.num_experts_per_tok=1", "model.n_shared_experts=0", "model.seq_aux=false",
                  "model.aux_loss_alpha=5e-4", "optim.accumulation_steps=2"], id="moe-minimind3-top1"),
    pytest.param(["model.use_moe=true", "precision=fp16"], id="moe-fp16"),
    # packed rows: the mask is built from position ids on the device, no data-dependent op
    pytest.param(["data.packing=true"], id="packing"),
    pytest.param(["data.packing=true", "model.use_moe=true", "model.flash_attn=false"], id="packing-moe-noflash"),
])
def test_train_step_never_reads_the_device(cfg_factory, tmp_path, monkeypatch, overrides):
    trainer = make_trainer(cfg_factory, tmp_path, *overrides)
    assert trainer.on_nan == "stop"
    windows = real_windows(trainer, 3)
    before = [p.detach().clone() for p in trainer.update.params]

    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(_site()))
    reads = watch_train_steps(monkeypatch, trainer, windows)

    assert reads == [], "train_step read device values on the host (a GPU sync per step):\n" + \
        "\n".join(reads)
    assert calls == [], f"torch.cuda.empty_cache called with loop.empty_cache=false: {calls}"
    # the watch must not have changed what the step does: the weights moved
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.update.params))
    # and the step's numbers are still readable afterwards (at log time)
    assert torch.isfinite(trainer.metrics.last.loss_sum).item()


def test_the_watch_catches_a_host_read(cfg_factory, tmp_path, monkeypatch):
    """The detector itself: a loop that calls .item() on the loss, or reads the moved labels, is caught,
    while reads of the host labels (what the real loop does) are not."""
    trainer = make_trainer(cfg_factory, tmp_path)
    windows = real_windows(trainer, 1)
    original = trainer.metrics.record

    def syncing_record(result, step_number):
        float(result.loss_sum)                  # device value: must be caught
        x, y = windows[0][0]
        int((y != -100).sum())                  # host labels: allowed
        int((y.to(trainer.device) != -100).sum())  # the device copy of the labels: caught
        return original(result, step_number)

    monkeypatch.setattr(trainer.metrics, "record", syncing_record)
    reads = watch_train_steps(monkeypatch, trainer, windows)
    assert any("__float__" in r for r in reads), reads
    assert any("__int__" in r for r in reads), reads
    assert len([r for r in reads if r.startswith("Tensor.")]) == 2, reads


def test_optimizer_is_fused(cfg_factory, tmp_path):
    trainer = make_trainer(cfg_factory, tmp_path)
    assert trainer.optimizer.defaults["fused"] is True


def test_no_empty_cache_by_default(cfg_factory):
    assert cfg_factory(QUIET).loop.empty_cache is False


def test_train_step_copies_no_python_value_to_the_device(cfg_factory, tmp_path, monkeypatch):
    """``torch.tensor(value, device=dev)`` inside the step is a blocking host->device copy on CUDA
    (cudaMemcpyAsync + cudaStreamSynchronize: a full sync, pytorch/pytorch#120996) that none of the
    read checks above sees. ``torch.full`` / ``masked_fill_`` / a Python scalar argument pass the
    value to the kernel instead. (the step's accounting did this with the first bad step until 5e8fba2.)"""
    trainer = make_trainer(cfg_factory, tmp_path)
    windows = real_windows(trainer, 2)
    made = []
    for name in ("tensor", "as_tensor"):
        original = getattr(torch, name)

        def factory(data, *a, __orig=original, __name=name, **k):
            if k.get("device") is not None:
                made.append(f"torch.{__name}(..., device={k['device']}) at {_site()}")
            return __orig(data, *a, **k)

        monkeypatch.setattr(torch, name, factory)
    for window in windows:
        trainer.step(window)
    assert made == [], "\n".join(made)
