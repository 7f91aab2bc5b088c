"""Evaluation on held-out data: the split, the exact loss, what it logs and keeps, and that it
changes nothing of training. In-process tests here; launch.py / torchrun / minimind.eval in
subprocesses in test_eval_e2e.py."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from minimind.data import holdout
from minimind.data.loader import Batches
from minimind.errors import CheckpointError, ConfigError
from minimind.train import build_and_fit, build_trainer

DEMO_SAMPLES = 16000


class Sized:
    """A stand-in dataset: the sample order needs only its length."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def trained_indices(n, val_size, seed, world_size, batch_size=4, epochs=2, start=0):
    """Every dataset index some rank's sampler yields, over ``epochs`` epochs."""
    split = holdout.split(n, val_size, seed)
    seen = set()
    for epoch in range(epochs):
        for rank in range(world_size):
            b = Batches(Sized(n), batch_size=batch_size, num_workers=0, shuffle=True, seed=seed, trim_padding=True,
                        rank=rank, world_size=world_size, indices=split.train)
            for batch in b.sampler(epoch, start if epoch == 0 else 0):
                seen.update(batch)
    return split, seen


# ---------------------------------------------------------------------- the split


@pytest.mark.parametrize("seed", [0, 7, 42])
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("val_size", [37, 0.1])
def test_held_out_samples_are_never_trained_on(seed, world_size, val_size):
    n = 203
    split, seen = trained_indices(n, val_size, seed, world_size)
    val = set(split.val.tolist())
    assert len(val) == (37 if val_size == 37 else 20)
    assert not seen & val
    assert seen | val <= set(range(n))
    # everything else is trained on (up to the < W tail an epoch drops so every rank has as many batches)
    assert len(seen) >= n - len(val) - (world_size - 1)
    # a run resumed 40 samples into the epoch also stays off them
    assert not trained_indices(n, val_size, seed, world_size, start=40)[1] & val


def test_the_held_out_set_depends_on_the_seed_only():
    a = holdout.split(1000, 50, 3)
    assert torch.equal(a.val, holdout.split(1000, 50, 3).val)  # every rank, every resume computes it again
    assert not torch.equal(a.val, holdout.split(1000, 50, 4).val)
    assert torch.equal(torch.cat([a.train, a.val]).sort().values, torch.arange(1000))
    assert bool((a.val[1:] > a.val[:-1]).all()) and bool((a.train[1:] > a.train[:-1]).all())  # file order
    assert holdout.split(1000, 0.05, 3).val.numel() == 50
    # a held-out set is not the head of an epoch's order (its own random stream)
    from minimind.data.sampler import epoch_permutation

    assert set(epoch_permutation(1000, 3, 0)[:50].tolist()) != set(a.val.tolist())


@pytest.mark.parametrize("val_size", [None, 0, 0.0])
def test_no_hold_out_keeps_the_sample_order(val_size):
    """Without a hold-out the sampler gets no index map: the order of runs before hold-outs."""
    assert holdout.split(500, val_size, 1) == (None, None)
    plain = Batches(Sized(500), batch_size=4, num_workers=0, shuffle=True, seed=1, trim_padding=True,
                    world_size=2, rank=1)
    mapped = Batches(Sized(500), batch_size=4, num_workers=0, shuffle=True, seed=1, trim_padding=True,
                     world_size=2, rank=1, indices=torch.arange(500))
    assert list(plain.sampler(1, 24)) == list(mapped.sampler(1, 24))
    assert plain.sampler(0).index_map is None


@pytest.mark.parametrize("val_size,message", [
    (20000, "data.val_size=20000 holds out 20000 samples, but data.path has only 16000: nothing would be left "
            "to train on; valid: a count below 16000 or a fraction < 1"),
    (16000, "data.val_size=16000 holds out 16000 samples, but data.path has only 16000"),
    (1e-5, "data.val_size=1e-05 holds out no sample of the 16000 in data.path (1e-05 of 16000 rounds to 0)"),
])
def test_a_hold_out_that_does_not_fit_the_data_is_refused(val_size, message):
    with pytest.raises(ConfigError) as e:
        holdout.split(DEMO_SAMPLES, val_size, 42)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize("overrides,message", [
    (["data.val_size=-1"], "data.val_size=-1.0 is invalid: a count of samples (a whole number >= 1), a fraction"),
    (["data.val_size=2.5"], "data.val_size=2.5 is invalid"),
    (["data.val_size=10", "data.val_path=/tmp/v.jsonl"], "data.val_path='/tmp/v.jsonl' is set too"),
    (["loop.save_best=true"], "loop.save_best=True is invalid: needs held-out data: set data.val_path or "
                              "data.val_size"),
    (["data.val_size=10", "loop.eval_interval=0"], "loop.eval_interval=0 is invalid: must be >= 1, or null"),
    (["data.val_size=10", "loop.eval_batches=0"], "loop.eval_batches=0 is invalid"),
    (["loop.eval_prompts=[' ']"], "loop.eval_prompts=[' '] is invalid: a list of non-empty strings"),
])
def test_eval_settings_are_checked_before_anything_is_built(cfg_factory, overrides, message):
    from minimind.config import validate

    with pytest.raises(ConfigError) as e:
        validate(cfg_factory(overrides))
    assert message in str(e.value)


def test_the_demo_holds_out_and_asks_its_questions(cfg_factory):
    demo = cfg_factory(fast=False)
    assert demo.data.val_size == 256 and demo.loop.eval_interval == 100
    assert list(demo.loop.eval_prompts)[:2] == ["What is the capital of Zorvia?", "What is 12 + 30?"]
    other = cfg_factory(["data=sft", "data.path=/x.jsonl"], fast=False)
    assert other.data.val_size is None and list(other.loop.eval_prompts) == []
    assert list(cfg_factory(["loop.eval_prompts=[Hi]"], fast=False).loop.eval_prompts) == ["Hi"]


# ---------------------------------------------------------------------- the evaluator


def _trainer(cfg_factory, tmp_path, extra=()):
    return build_trainer(cfg_factory(["data.val_size=24"] + list(extra)), tmp_path)


def test_the_trainer_trains_on_the_rest_and_evaluates_the_held_out(cfg_factory, tmp_path):
    tr = _trainer(cfg_factory, tmp_path)
    try:
        ev = tr.evaluator
        split = holdout.split(DEMO_SAMPLES, 24, 42)
        assert torch.equal(ev.indices, split.val) and torch.equal(tr.batches.indices, split.train)
        assert len(tr.batches) == DEMO_SAMPLES - 24 and ev.selected() == split.val.tolist()
        trained = {i for batch in tr.batches.sampler(0) for i in batch}
        assert not trained & set(ev.selected())
        assert ev.dataset is not tr.batches.dataset  # its own counters, no augmentation draws
    finally:
        tr.dist.destroy()


def test_the_val_loss_is_the_exact_token_mean_over_the_set(cfg_factory, tmp_path):
    from minimind.model import causal_lm_loss, count_loss_tokens

    tr = _trainer(cfg_factory, tmp_path)
    try:
        ev, model = tr.evaluator, tr.raw_model
        result = ev.compute(model)
        total, units = 0.0, 0
        with torch.no_grad():
            model.eval()
            for i in ev.selected():  # one sample at a time, untrimmed: a different batching
                x, y = ev.dataset[i]
                total += causal_lm_loss(model(x[None]).logits, y[None], reduction="sum").double().item()
                units += int(count_loss_tokens(y[None]))
        assert result.units == units and result.samples == 24
        assert result.loss == pytest.approx(total / units, rel=1e-6)
        ev.configure(max_batches=2)  # the first 2 x batch_size held-out samples
        assert ev.selected() == holdout.split(DEMO_SAMPLES, 24, 42).val[:8].tolist()
        assert ev.compute(model).samples == 8
    finally:
        tr.dist.destroy()


@pytest.mark.parametrize("n,world_size", [(10, 3), (2, 3), (24, 2)])
def test_ranks_share_the_set_without_dropping_a_sample(cfg_factory, tmp_path, n, world_size):
    tr = _trainer(cfg_factory, tmp_path)
    try:
        ev = tr.evaluator
        ev.indices = ev.indices[:n]
        shards = []
        for rank in range(world_size):
            ev.dist = SimpleNamespace(rank=rank, world_size=world_size)
            shards.append([i for batch in ev.shard() for i in batch])
            assert all(len(batch) <= ev.batch_size for batch in ev.shard())
        assert sorted(i for s in shards for i in s) == sorted(ev.selected())
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    finally:
        tr.dist.destroy()


def test_an_evaluation_leaves_every_rng_stream_where_it_was(cfg_factory, tmp_path):
    from torch.utils.data import DataLoader

    before = torch.get_rng_state()
    iter(DataLoader(range(4)))  # the pitfall the evaluator avoids: an iterator draws a seed
    assert not torch.equal(before, torch.get_rng_state())

    tr = _trainer(cfg_factory, tmp_path, ["data.num_workers=2", "model.dropout=0.1", "loop.eval_prompts=[Hi,Yo]"])
    try:
        random.seed(1), np.random.seed(2), torch.manual_seed(3)
        states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
        tr.raw_model.train()
        tr.evaluator.evaluate(tr.raw_model, step=1, total_steps=1, epoch=1)
        assert tr.raw_model.training  # back in train mode
        assert random.getstate() == states[0] and np.array_equal(np.random.get_state()[1], states[1])
        assert torch.equal(torch.get_rng_state(), states[2])
        rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
        assert [r["prompt"] for r in rows] == ["Hi", "Yo"] and all(r["step"] == 1 for r in rows)
    finally:
        tr.dist.destroy()


def _final(tr):
    return {k: v.clone() for k, v in tr.raw_model.state_dict().items()}, torch.get_rng_state()


@pytest.mark.parametrize("extra", [["data.num_workers=2", "model.dropout=0.1"], ["data.num_workers=0"]],
                         ids=["workers2-dropout", "workers0"])
def test_evaluating_changes_nothing_of_training(cfg_factory, tmp_path, extra):
    """The same run with and without evaluations ends with the same weights and RNG, bit for bit."""
    overrides = ["data.val_size=24", "loop.max_steps=6", "loop.eval_interval=2", "loop.save_interval=3",
                 "loop.eval_prompts=[Hi]"] + extra
    on = build_trainer(cfg_factory(overrides), tmp_path / "on")
    on.fit()
    w_on, rng_on = _final(on)
    off = build_trainer(cfg_factory(overrides), tmp_path / "off")
    off.evaluator = None  # the same held-out split, never evaluated
    off.fit()
    w_off, rng_off = _final(off)
    assert all(torch.equal(w_on[k], w_off[k]) for k in w_on)
    assert torch.equal(rng_on, rng_off)
    evals = [json.loads(x) for x in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if r.get("kind") == "eval"] == [2, 4, 6]
    train_rows = [r for r in evals if "kind" not in r]
    off_rows = [json.loads(x) for x in (tmp_path / "off" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in train_rows] == [r["loss"] for r in off_rows]


def test_the_run_returns_the_val_loss_and_says_so(cfg_factory, tmp_path):
    summary = build_and_fit(cfg_factory(["data.val_size=16", "loop.max_steps=3", "loop.eval_interval=2"]),
                            tmp_path / "a")
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("kind") == "eval"]
    assert [r["step"] for r in evals] == [2, 3]  # every 2 steps and at the end
    assert summary["result"] == evals[-1]["val_loss"] and summary["result_metric"] == "val_loss"
    on_disk = json.loads((tmp_path / "a" / "summary.json").read_text())
    best = min(evals, key=lambda r: r["val_loss"])
    assert on_disk["val_loss"] == evals[-1]["val_loss"] and on_disk["val_step"] == 3
    assert (on_disk["best_val_loss"], on_disk["best_val_step"]) == (best["val_loss"], best["step"])
    assert on_disk["final_loss"] == [r for r in rows if "kind" not in r][-1]["loss"]  # still the training loss
    assert evals[-1]["val_ppl"] == pytest.approx(np.exp(evals[-1]["val_loss"]))
    plain = build_and_fit(cfg_factory(["loop.max_steps=2"]), tmp_path / "b")
    assert plain["result_metric"] == "final_loss" and plain["result"] == plain["final_loss"]
    assert "val_loss" not in plain and "best_val_loss" not in plain


def test_save_best_keeps_the_best_also_across_a_resume(cfg_factory, tmp_path, monkeypatch):
    from minimind.evaluate import EvalResult, Evaluator

    scripted = iter([3.0, 2.0, 2.5, 1.5, 4.0, 5.0, 1.0])  # val losses at steps 1..7
    monkeypatch.setattr(Evaluator, "compute", lambda self, model: EvalResult(loss=next(scripted), units=1, samples=1))
    base = ["data.val_size=16", "loop.save_best=true", "loop.eval_interval=1", "loop.save_interval=1",
            "loop.keep_last=10", "loop.resume_changes=allow"]  # allow: each resume runs longer
    run = tmp_path / "run"
    build_and_fit(cfg_factory(base + ["loop.max_steps=5"]), run)
    best = torch.load(run / "full_sft_64_best.pth", weights_only=True)

    def weights_at(step):
        state = torch.load(run / "checkpoints" / f"step_{step:08d}.pt", weights_only=True)["model"]
        return {k: v.half() for k, v in state.items()}

    assert all(torch.equal(best[k], weights_at(4)[k]) for k in best)  # 1.5 at step 4, not the last (4.0)
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["best_val_loss"], summary["best_val_step"], summary["val_loss"]) == (1.5, 4, 4.0)
    mtime = (run / "full_sft_64_best.pth").stat().st_mtime_ns

    tr = build_trainer(cfg_factory(base + ["loop.max_steps=6"]), run)  # resumes at step 5: 5.0 is worse
    tr.fit()
    assert (tr.evaluator.best_loss, tr.evaluator.best_step) == (1.5, 4)
    assert (run / "full_sft_64_best.pth").stat().st_mtime_ns == mtime
    build_and_fit(cfg_factory(base + ["loop.max_steps=7"]), run)  # 1.0 at step 7: the new best
    best = torch.load(run / "full_sft_64_best.pth", weights_only=True)
    assert all(torch.equal(best[k], weights_at(7)[k]) for k in best)


def test_resuming_with_another_hold_out_is_refused(cfg_factory, tmp_path):
    build_and_fit(cfg_factory(["data.val_size=64", "loop.max_steps=2"]), tmp_path / "a")
    for overrides, says in ((["data.val_size=32"], "trained on 15936 samples (a hold-out), this run would "
                                                   "train on 15968 samples (a hold-out)"),
                            (["data.val_size=64", "seed=1"], "data.val_size or seed differ"),
                            ([], "this run would train on the whole data file")):
        tr = build_trainer(cfg_factory(overrides + ["loop.max_steps=4"]), tmp_path / "a")
        try:
            with pytest.raises(CheckpointError, match="differ from the run's") as e:
                tr.fit()
            assert says in str(e.value)
        finally:
            tr.dist.destroy()


def test_a_val_file_of_another_format_is_refused_naming_it(cfg_factory, tmp_path):
    from minimind.data import DataError, asset_path

    pretrain = asset_path("demo/pretrain.jsonl")
    with pytest.raises(DataError) as e:
        build_trainer(cfg_factory([f"data.val_path={pretrain}"]), tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"data.val_path='{pretrain}': {pretrain}, line 1: missing key \"conversations\"")


def test_a_val_file_is_evaluated_whole(cfg_factory, tmp_path):
    from minimind.data import asset_path

    val = tmp_path / "val.jsonl"
    val.write_text("".join(open(asset_path("demo/sft.jsonl")).readlines()[:10]))
    tr = build_trainer(cfg_factory([f"data.val_path={val}"]), tmp_path / "run")
    try:
        assert tr.batches.indices is None  # the training file is used whole
        assert tr.evaluator.selected() == list(range(10)) and tr.evaluator.compute(tr.raw_model).samples == 10
    finally:
        tr.dist.destroy()


# ---------------------------------------------------------------------- where it shows


def test_the_eval_line_and_the_wandb_values(tmp_path):
    from minimind.tracking import Tracker, eval_line

    row = {"kind": "eval", "step": 100, "total_steps": 1000, "epoch": 1, "val_loss": 2.34567, "val_ppl": 10.4432,
           "val_reward_acc": 0.75, "val_samples": 256, "val_units": 3000, "best_val_loss": 2.3, "best_val_step": 50,
           "eval_s": 1.25}
    assert eval_line(row) == ("Eval:(100/1000) val_loss:2.3457 ppl:10.443 val_reward_acc:0.7500 best:2.3000@50 "
                              "samples:256 time:1.2s")
    logged = []
    tracker = Tracker(run_dir=str(tmp_path))
    tracker._run = SimpleNamespace(log=lambda values, step: logged.append((step, values)))
    samples = [{"step": 100, "prompt": "Hi", "answer": "Hello"}]
    tracker.log_eval(row, samples)
    tracker.log_eval(dict(row, step=200), [{"step": 200, "prompt": "Hi", "answer": "Hello!"}])
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0]) == row
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 2
    (step, values), (step2, values2) = logged
    assert step == 100 and values["val_loss"] == 2.34567 and "step" not in values and "kind" not in values
    assert step2 == 200 and values2["samples"].data == [[100, "Hi", "Hello"], [200, "Hi", "Hello!"]]
    tracker._run = None


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resume_with_dropout_and_evaluation_is_bit_exact(cfg_factory, tmp_path, workers):
    """Continued from its step 3 checkpoint, a run with dropout (which draws from torch's RNG every
    step) ends as the uninterrupted one. Before the training DataLoader had a generator of its
    own, each new iterator (one per resume) drew its seed from the global RNG and shifted the
    dropout stream."""
    import shutil

    overrides = ["model.dropout=0.1", "data.val_size=24", "loop.eval_interval=2", "loop.save_interval=3",
                 "loop.max_steps=6", f"data.num_workers={workers}", "loop.eval_prompts=[Hi]"]
    build_and_fit(cfg_factory(overrides), tmp_path / "ref")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "ref" / "checkpoints" / "step_00000003.pt", tmp_path / "run" / "checkpoints")
    build_and_fit(cfg_factory(overrides), tmp_path / "run")
    a, b = (torch.load(tmp_path / r / "checkpoints" / "step_00000006.pt", weights_only=True) for r in ("ref", "run"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["eval"] == b["eval"] and torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])


def test_the_eval_cost_benchmark_prints_its_numbers(capsys):
    from conftest import import_benchmark

    bench = import_benchmark("eval_cost")
    r = bench.main(["--steps", "1", "--rounds", "1", "--warmup", "0", "--val-size", "8", "--prompts", "1",
                    "--seq-len", "32", "--batch-size", "4", "--override", "model.hidden_size=32",
                    "--override", "model.num_attention_heads=2", "--override", "model.num_key_value_heads=1"])
    assert r["eval_batches"] == 2 and r["prompts"] == 1 and r["device"] == "cpu"
    eval_ms = r["eval_loss_ms"] + r["eval_samples_ms"]
    assert r["eval_steps_equivalent"] == pytest.approx(eval_ms / r["train_ms_per_step"])
    out = capsys.readouterr().out
    assert "one evaluation" in out and "training steps" in out
