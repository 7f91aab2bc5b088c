"""objective=distill: alpha * CE + (1 - alpha) * T^2 * KL(teacher || student), a frozen teacher."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import FAST, run_launch
from test_update_step import assert_grads_close, batches, capture_step_grads

from minimind.errors import ConfigError
from minimind.model import build_model, causal_lm_loss
from minimind.objectives import Distillation, distill_kl
from minimind.train import build_trainer
from minimind.weights import save_weights

TEACHER = dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def teacher_file(tmp_path, vocab=768, seed=1, **fields):
    torch.manual_seed(seed)
    shape = dict(TEACHER, **fields)
    model = build_model(vocab_size=vocab, max_position_embeddings=2048, **shape)
    return save_weights(model, str(tmp_path / f"teacher_{shape['hidden_size']}_{vocab}.pth"), dtype=None), model


def distill_run(path, **shape):
    shape = dict(TEACHER, **shape)
    return ["objective=distill", f"objective.teacher.from_weight={path}"] + \
        [f"objective.teacher.{k}={v}" for k, v in shape.items()]


def make(cfg_factory, tmp_path, path, *overrides, shape=None):
    cfg = cfg_factory(distill_run(path, **(shape or {})) + ["optim.lr=1e-3", "data.shuffle=false", *overrides])
    tr = build_trainer(cfg, tmp_path)
    tr.prepare(100)
    return tr


def manual_kl(s, t, temperature):
    p = torch.softmax(t.double() / temperature, -1)
    return (p * (p.log() - torch.log_softmax(s.double() / temperature, -1))).sum(-1)


def test_kl_is_zero_when_the_teacher_is_the_student():
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 30)
    assert torch.count_nonzero(distill_kl(logits, logits.clone(), 1.5)) == 0


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_the_distill_term_is_t_squared_times_the_kl(temperature):
    torch.manual_seed(0)
    student = build_model(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                          vocab_size=40, max_position_embeddings=64)
    teacher_model = build_model(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                vocab_size=40, max_position_embeddings=64)
    x = torch.randint(0, 40, (3, 9))
    y = x.clone()
    y[:, :3] = -100
    y[1, 7:] = -100
    obj = Distillation(alpha=0.0, temperature=temperature)
    obj.autocast, obj.teacher = contextlib.nullcontext, teacher_model.eval()  # what setup() would build
    out = obj(student, (x, y))
    with torch.no_grad():
        kl = manual_kl(student(x).logits[:, :-1], teacher_model(x).logits[:, :-1], temperature)
    mask = (y[:, 1:] != -100).double()
    want_kl = (kl * mask).sum().item()
    assert out.metrics["kl"].item() == pytest.approx(want_kl, rel=1e-4)  # fp32 vs float64
    # alpha = 0: the loss is the T^2-scaled KL term
    assert out.loss.item() == pytest.approx(temperature ** 2 * out.metrics["kl"].item(), rel=1e-6)
    obj.alpha = 1.0
    assert obj(student, (x, y)).loss.item() == pytest.approx(causal_lm_loss(student(x).logits, y, "sum").item(),
                                                              rel=1e-6)


def test_a_teacher_equal_to_the_student_adds_nothing(cfg_factory, tmp_path):
    student = build_model(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          vocab_size=768, max_position_embeddings=2048)
    path = save_weights(student, str(tmp_path / "same_64.pth"), dtype=None)
    tr = make(cfg_factory, tmp_path / "run", path, f"model.from_weight={path}",
              shape=dict(hidden_size=64, num_hidden_layers=2))
    x, y = batches(tr.batches.dataset, 0, 4, 1)[0]
    out = tr.update.objective(tr.raw_model, (x, y))
    assert out.metrics["kl"].item() == pytest.approx(0.0, abs=1e-6)
    assert out.loss.item() == pytest.approx(0.5 * out.metrics["ce"].item(), rel=1e-6)


def test_the_teacher_is_frozen_and_outside_the_optimizer_and_checkpoint(cfg_factory, tmp_path):
    path, teacher_model = teacher_file(tmp_path)
    tr = make(cfg_factory, tmp_path / "run", path, "loop.max_steps=3", "loop.log_interval=1")
    t = tr.update.objective.teacher
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    assert t.config.hidden_size == 96 and t.config.vocab_size == 768
    assert all(torch.equal(v, teacher_model.state_dict()[k]) for k, v in t.state_dict().items())
    assert not {id(p) for g in tr.optimizer.param_groups for p in g["params"]} & {id(p) for p in t.parameters()}
    tr.fit()
    assert all(torch.equal(v, teacher_model.state_dict()[k]) for k, v in t.state_dict().items())
    state = torch.load(next((tmp_path / "run" / "checkpoints").glob("step_*.pt")), weights_only=True)
    assert set(state["model"]) == set(tr.raw_model.state_dict())
    assert {"ce", "kl"} <= set(tr.history[-1]) and (tmp_path / "run" / "full_dist_64.pth").is_file()
    assert tr.update.objective.unit == "token"


def test_accumulation_k_by_b_equals_one_batch_of_k_times_b(cfg_factory, tmp_path):
    path, _ = teacher_file(tmp_path)
    k, b = 4, 2
    acc = make(cfg_factory, tmp_path / "a", path, f"optim.accumulation_steps={k}", f"data.batch_size={b}",
               "optim.grad_clip=null")
    big = make(cfg_factory, tmp_path / "b", path, "optim.accumulation_steps=1", f"data.batch_size={k * b}",
               "optim.grad_clip=null")
    g_acc, g_big = capture_step_grads(acc), capture_step_grads(big)
    acc.step(batches(acc.batches.dataset, 0, b, k))
    big.step(batches(big.batches.dataset, 0, k * b, 1))
    assert_grads_close(g_acc[0], g_big[0])


def test_fp16_overflow_skips_the_distill_step(cfg_factory, tmp_path):
    path, _ = teacher_file(tmp_path)
    tr = make(cfg_factory, tmp_path / "run", path, "precision=fp16")
    before = {n: p.detach().clone() for n, p in tr.raw_model.named_parameters()}
    handle = tr.raw_model.model.norm.weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    tr.step(batches(tr.batches.dataset, 0, 4, 1))
    handle.remove()
    assert all(torch.equal(p, before[n]) for n, p in tr.raw_model.named_parameters())
    assert tr.scaler.get_scale() == 32768.0 and int(tr.metrics.skipped) == 1


def test_the_distill_step_never_reads_the_device(cfg_factory, tmp_path, monkeypatch):
    from test_perf import real_windows, watch_train_steps

    path, _ = teacher_file(tmp_path)
    tr = make(cfg_factory, tmp_path / "run", path, "loop.log_interval=1000", "loop.save_interval=1000")
    assert watch_train_steps(monkeypatch, tr, real_windows(tr, 2)) == []


def test_a_teacher_of_another_vocabulary_is_refused_in_one_line(tmp_path):
    path, _ = teacher_file(tmp_path, vocab=800)
    r = run_launch(FAST + distill_run(path) + ["loop.max_steps=1", f"hydra.run.dir={tmp_path}/r"], cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("Error: objective.teacher has a vocabulary of 800 tokens")
    assert "the student 768" in lines[0] and "same tokenizer" in lines[0]
    assert not (tmp_path / "r" / "checkpoints").exists()  # refused before training


def test_distill_needs_a_teacher_file(cfg_factory, tmp_path):
    from minimind.train import preflight

    with pytest.raises(ConfigError, match=r"objective=distill needs the teacher's weights: "
                                          r"objective.teacher.from_weight is null; give objective.teacher"):
        preflight(cfg_factory(["objective=distill"]), tmp_path)
    with pytest.raises(ConfigError, match=r"objective.teacher.from_weight='/nope.pth': no such file"):
        preflight(cfg_factory(["objective=distill", "objective.teacher.from_weight=/nope.pth"]), tmp_path)
    from minimind.config import validate

    with pytest.raises(ConfigError, match=r"objective.temperature=0.0 is invalid"):
        validate(cfg_factory(["objective=distill", "objective.teacher.from_weight=t.pth", "objective.temperature=0"]))
    with pytest.raises(ConfigError, match=r"objective.teacher: objective.teacher.hidden_size=65"):
        validate(cfg_factory(["objective=distill", "objective.teacher.from_weight=t.pth",
                              "objective.teacher.hidden_size=65"]))
