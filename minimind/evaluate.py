"""Evaluation: the held-out loss of the active objective, and greedy samples of a few prompts.

The :class:`Evaluator` is a part of the loop (``Trainer(evaluator=...)``); the Trainer decides
*when* (every ``loop.eval_interval`` optimizer steps and at the end of the run), this module
*what*: ``python -m minimind.eval`` (:mod:`minimind.eval`) runs the same code on any weights.

What one evaluation computes, and why it is done this way:

- The loss of ``objective(model, batch)``, the objective the run trains with, so a DPO run gets
  its held-out reward accuracy and margin and a distillation run its KL and CE from the same
  call: ``MicroBatchLoss.loss`` and every ``metrics`` entry are sums over units (tokens, pairs),
  added up over the whole held-out set and divided once by its units: the exact unit mean,
  not a mean of batch means. ``val_ppl`` (exp of the loss) is added for language modelling.
- Eval mode (no dropout), no autograd, the run's autocast (the objective applies it), on the
  bare model: no DDP wrapper (whose forward would sync buffers) and no compiled graph (eval
  mode and no_grad would recompile it).
- Under DDP rank r takes the held-out samples r, r + W, r + 2W, ...: nothing is dropped, the
  ranks' shards differ by at most one sample, and since the bare model runs no collective in
  its forward the ranks may run different numbers of batches. The sums and unit counts are
  all-reduced once, in one tensor (plus, under DDP, one host gather of the metric names, for a
  rank whose shard is empty). W ranks therefore give one process's loss (to float rounding).
- ``loop.eval_batches`` caps the set to its first ``eval_batches x data.batch_size`` samples, the
  same ones on any world size and at every evaluation, so the values stay comparable.
- It changes nothing of training. Its DataLoader has a generator of its own (creating a
  DataLoader iterator otherwise draws a seed from torch's global RNG, even with 0 workers), and
  every RNG state (python, numpy, torch, CUDA) is put back afterwards (generation, a dataset, an
  objective cannot leak a draw into the training stream). The held-out dataset is an instance
  of its own (its counters and epoch are not the training set's) with the SFT augmentations off,
  so the same weights always get the same loss. With and without evaluation a run ends with
  the same weights, bit for bit, and resume stays exact.

Samples: each ``loop.eval_prompts`` entry is decoded greedily (at most :data:`MAX_NEW_TOKENS`),
rendered with the tokenizer's chat template unless the data is pretraining text (then it
continues bos + the prompt, as ``python -m minimind.generate`` does), on rank 0 only.

The best evaluation (lowest val loss, its step) and the last are kept in the checkpoint
(:meth:`Evaluator.state_dict`), so ``loop.save_best`` never replaces the best weights with
worse ones after a resume.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from minimind import checkpoint as ckpt
from minimind.data.loader import TrimmingCollate
from minimind.objectives import LanguageModeling, to_device

MAX_NEW_TOKENS = 64
# a held-out set is scored as it is: SFT's random system prompts / dropped think blocks are
# training augmentations (drawn per epoch), so they are off for evaluation
NO_AUGMENTATION = {"system_prompt_prob": 0.0, "drop_empty_think_prob": 0.0}


class HeldOut(NamedTuple):
    dataset: Any                     # a dataset of the run's class (and format checks)
    indices: Optional[torch.Tensor]  # the held-out samples of it; None: all of them
    source: str                      # for messages: "data.val_path=..." / "data.val_size=..."


@dataclass
class EvalResult:
    loss: float                      # summed loss / units, over the whole (capped) held-out set
    units: int                       # tokens, pairs: what the objective counts
    samples: int                     # held-out samples evaluated, all ranks
    metrics: Dict[str, float] = field(default_factory=dict)  # the objective's, per unit
    seconds: float = 0.0


@contextlib.contextmanager
def untouched_rng() -> Iterator[None]:
    """Whatever runs inside leaves python's, numpy's, torch's and CUDA's RNG states as they were."""
    state = ckpt.rng_state()
    try:
        yield
    finally:
        ckpt.set_rng_state(state)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def held_out_dataset(node, data_values: Dict[str, Any], seed: int, path: str, source: str):
    """The run's dataset class on ``path`` (its tokenizer, max_length, line checks), augmentation
    off; a file in another format is refused in one line naming ``source``."""
    from hydra.utils import get_object, instantiate

    from minimind.data.errors import DataError
    from minimind.data.loader import dataset_kwargs

    values = dict(data_values, path=path, **NO_AUGMENTATION)
    try:
        return instantiate(node, **dataset_kwargs(get_object(node._target_), values, seed))
    except Exception as e:
        from minimind.train import find_user_error

        err = find_user_error(e)
        if err is None:
            raise
        raise DataError(f"{source}: {err}") from None


def held_out(cfg, data_values: Dict[str, Any], split) -> Optional[HeldOut]:
    """The run's held-out data (``data.val_path``, or the ``data.val_size`` part of data.path
    that ``split`` keeps out of training); None when there is none."""
    d = cfg.data
    if d.val_path:
        source = f"data.val_path={d.val_path!r}"
        return HeldOut(held_out_dataset(d.dataset, data_values, cfg.seed, d.val_path, source), None, source)
    if split.val is not None:
        source = f"data.val_size={d.val_size:g}"
        return HeldOut(held_out_dataset(d.dataset, data_values, cfg.seed, d.path, source), split.val, source)
    return None


class Evaluator:
    """The held-out loss and samples of one run (see the module docstring)."""

    def __init__(self, heldout: HeldOut, *, objective, dist, batch_size: int, num_workers: int = 0,
                 trim_padding: bool = True, autocast=contextlib.nullcontext, tracker=None, chat: bool = True):
        self.dataset, self.indices, self.source = heldout
        self.objective, self.dist, self.tracker = objective, dist, tracker
        self.batch_size, self.num_workers, self.trim = int(batch_size), int(num_workers), bool(trim_padding)
        self.autocast, self.chat = autocast, chat
        self.perplexity = isinstance(objective, LanguageModeling)  # exp(loss) means something for CE
        self.interval: Optional[int] = None
        self.max_batches: Optional[int] = None
        self.prompts: List[str] = []
        self.save_best: Optional[Callable[[], None]] = None
        self.last_loss: Optional[float] = None
        self.last_step: Optional[int] = None
        self.best_loss: Optional[float] = None
        self.best_step: Optional[int] = None

    def configure(self, *, interval: Optional[int] = None, max_batches: Optional[int] = None, prompts=(),
                  save_best: Optional[Callable[[], None]] = None) -> "Evaluator":
        """The loop's settings: ``loop.eval_interval``, ``loop.eval_batches``, ``loop.eval_prompts``,
        and for ``loop.save_best`` the Trainer's writer of the ``_best`` weights (rank 0 calls it)."""
        self.interval, self.max_batches, self.save_best = interval, max_batches, save_best
        self.prompts = [str(p) for p in prompts]
        return self

    # ------------------------------------------------------------------ the held-out loss

    def selected(self) -> List[int]:
        """The dataset indices one evaluation covers, all ranks (capped by eval_batches)."""
        idx = list(range(len(self.dataset))) if self.indices is None else self.indices.tolist()
        return idx[:self.max_batches * self.batch_size] if self.max_batches else idx

    def shard(self) -> List[List[int]]:
        """This rank's batches: every W-th selected sample from rank r on, nothing dropped."""
        mine = self.selected()[self.dist.rank::self.dist.world_size]
        return [mine[i:i + self.batch_size] for i in range(0, len(mine), self.batch_size)]

    def _loader(self, batches: List[List[int]]) -> DataLoader:
        # generator: creating the iterator draws its base seed from here, not from the global RNG
        return DataLoader(self.dataset, batch_sampler=batches, num_workers=min(self.num_workers, len(batches)),
                          collate_fn=TrimmingCollate() if self.trim else None,
                          pin_memory=self.dist.device.type == "cuda", generator=torch.Generator())

    def compute(self, model: torch.nn.Module) -> EvalResult:
        """The exact unit mean of the objective's loss and metrics over the held-out set."""
        t0, dev, obj = time.time(), self.dist.device, self.objective
        batches = self.shard()
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        sums: Dict[str, torch.Tensor] = {}
        units, samples = 0, sum(len(b) for b in batches)
        with untouched_rng(), eval_mode(model), torch.no_grad():
            for batch in self._loader(batches) if batches else ():
                units += obj.count(batch)  # the host copy, as in the update step
                out = obj(model, to_device(batch, dev))
                loss_sum += out.loss.detach().double()
                for name, value in out.metrics.items():
                    sums[name] = sums[name] + value.detach().double() if name in sums else value.detach().double()
        names = sorted(sums)
        if self.dist.distributed:  # a rank with an empty shard knows no metric names
            names = sorted({n for ns in self.dist.gather_objects(names) for n in ns})
        zero = torch.zeros((), dtype=torch.float64, device=dev)
        values = torch.stack([loss_sum, torch.tensor(float(units), dtype=torch.float64, device=dev),
                              torch.tensor(float(samples), dtype=torch.float64, device=dev)]
                             + [sums.get(n, zero) for n in names])
        # note: the one host read of an evaluation (one all-reduce of every sum and count)
        got = self.dist.all_reduce_sum(values).tolist()
        n = max(got[1], 1.0)
        return EvalResult(loss=got[0] / n, units=int(got[1]), samples=int(got[2]),
                          metrics={name: got[3 + i] / n for i, name in enumerate(names)},
                          seconds=time.time() - t0)

    # ------------------------------------------------------------------ samples

    def samples(self, model: torch.nn.Module, step: Optional[int] = None,
                max_new_tokens: int = MAX_NEW_TOKENS) -> List[Dict[str, Any]]:
        """Greedy answers to the prompts (rank 0; the other ranks return [] at once)."""
        if not self.prompts or not self.dist.is_main:
            return []
        tok, dev, out = self.dataset.tokenizer, self.dist.device, []
        with untouched_rng(), eval_mode(model), self.autocast():
            for prompt in self.prompts:
                ids = encode_prompt(tok, prompt, self.chat)
                x = torch.tensor([ids], dtype=torch.long, device=dev)
                y = model.generate(x, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id)
                answer = tok.decode(y[0, len(ids):].tolist(), skip_special_tokens=True).strip()
                out.append({"step": step, "prompt": prompt, "answer": answer})
        return out

    # ------------------------------------------------------------------ in the loop

    def after_step(self, model: torch.nn.Module, progress, total_steps: int) -> None:
        """The Trainer calls this after every optimizer step: evaluate every ``interval`` steps
        and at the last step of the run; keep the best weights when asked."""
        step = progress.step
        if step < total_steps and not (self.interval and step % self.interval == 0):
            return
        best = self.evaluate(model, step=step, total_steps=total_steps, epoch=progress.epoch + 1)
        if best and self.save_best is not None and self.dist.is_main:
            self.save_best()

    def evaluate(self, model: torch.nn.Module, *, step: int, total_steps: int, epoch: int) -> bool:
        """Evaluate at ``step``, log it; True when this is the best val loss so far."""
        result = self.compute(model)
        best = self.best_loss is None or result.loss < self.best_loss
        self.last_loss, self.last_step = result.loss, step
        if best:
            self.best_loss, self.best_step = result.loss, step
        samples = self.samples(model, step)
        if self.tracker is not None:
            self.tracker.log_eval(self.row(result, step=step, total_steps=total_steps, epoch=epoch), samples)
        return best

    def row(self, result: EvalResult, *, step: int, total_steps: int, epoch: int) -> Dict[str, Any]:
        """The metrics.jsonl row of an evaluation (``kind: eval``; training rows have no kind)."""
        row: Dict[str, Any] = {"kind": "eval", "step": step, "total_steps": total_steps, "epoch": epoch,
                               "val_loss": result.loss}
        if self.perplexity:
            row["val_ppl"] = perplexity(result.loss)
        row.update({f"val_{name}": v for name, v in result.metrics.items()})
        row.update({"val_samples": result.samples, "val_units": result.units, "best_val_loss": self.best_loss,
                    "best_val_step": self.best_step, "eval_s": result.seconds})
        return row

    def state_dict(self) -> Dict[str, Any]:
        return {"last_loss": self.last_loss, "last_step": self.last_step, "best_loss": self.best_loss,
                "best_step": self.best_step}

    def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
        for key, value in (state or {}).items():
            if key in ("last_loss", "last_step", "best_loss", "best_step"):
                setattr(self, key, value)

    def summary(self) -> Dict[str, Any]:
        return {"val_loss": self.last_loss, "val_step": self.last_step, "best_val_loss": self.best_loss,
                "best_val_step": self.best_step, "val_data": self.source}


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


def encode_prompt(tokenizer, prompt: str, chat: bool) -> List[int]:
    """A prompt's ids: a user turn of the chat template (ready for the reply), or bos + text."""
    if chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        return tokenizer.encode(text)
    bos = getattr(tokenizer, "bos_token_id", None)
    return ([bos] if bos is not None else []) + tokenizer.encode(prompt)


def run_result(evaluator: Optional[Evaluator], final_loss: Optional[float]) -> Tuple[Dict[str, Any], float]:
    """What the task function returns (for sweepers): the last val loss when the run evaluates,
    else the last training loss; and the summary keys that say which."""
    extra: Dict[str, Any] = evaluator.summary() if evaluator is not None else {}
    if evaluator is not None and evaluator.last_loss is not None:
        metric, value = "val_loss", evaluator.last_loss
    else:
        metric, value = "final_loss", final_loss
    extra.update(result_metric=metric, result=value)
    return extra, float(value) if value is not None else math.nan
