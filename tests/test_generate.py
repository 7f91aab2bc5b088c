"""`python -m minimind.generate`: model YAML or run directory, weights, streaming, greedy determinism."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import minimind.generate as gen
from minimind.model import build_model
from minimind.weights import save_weights

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = ROOT / "conf" / "model" / "tiny.yaml"


class ByteTokenizer:
    """Stand-in with the load_tokenizer interface: 3 specials, then one id per byte."""

    vocab_size, pad_token_id, bos_token_id, eos_token_id = 259, 0, 1, 2

    def encode(self, text):
        return [b + 3 for b in text.encode("utf-8")]

    def decode(self, ids, skip_special_tokens=True):
        data = bytes(int(i) - 3 for i in ids if int(i) >= 3)
        return data.decode("utf-8", errors="replace")

    def apply_chat_template(self, messages, add_generation_prompt=False, tools=None):
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


def tiny_fields(vocab_size):
    fields = OmegaConf.to_container(OmegaConf.load(TINY_YAML))
    fields.pop("_target_"), fields.pop("from_weight")
    fields["vocab_size"] = vocab_size
    return fields


@pytest.fixture
def fake_tokenizer(monkeypatch):
    seen = []

    def load(path):
        seen.append(path)
        return ByteTokenizer()
    monkeypatch.setattr(gen, "_load_tokenizer", load)
    return seen


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    model = build_model(**tiny_fields(ByteTokenizer.vocab_size))
    return save_weights(model, str(tmp_path / "full_sft_128.pth"))


def run_main(capsys, argv):
    assert gen.main(argv) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_yaml_and_weights_greedy_is_deterministic(capsys, fake_tokenizer, weights):
    argv = ["--model", str(TINY_YAML), "--weights", weights, "--prompt", "hello", "--greedy",
            "--max-new-tokens", "24", "--device", "cpu"]
    out1, err1 = run_main(capsys, argv)
    out2, _ = run_main(capsys, argv)
    assert out1.strip() and out1 == out2
    assert "Model params:" in err1 and weights in err1
    assert fake_tokenizer == [None, None]  # default: the embedded demo tokenizer


def test_sampling_with_seed_and_chat(capsys, fake_tokenizer, weights):
    argv = ["--model", str(TINY_YAML), "--weights", weights, "--prompt", "hi", "--chat", "--seed", "3",
            "--temperature", "0.9", "--top-k", "20", "--top-p", "0.9", "--repetition-penalty", "1.1",
            "--max-new-tokens", "16"]
    out1, _ = run_main(capsys, argv)
    out2, _ = run_main(capsys, argv)
    assert out1 == out2 and out1.endswith("\n")


def test_run_directory_defaults(tmp_path, capsys, fake_tokenizer):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    model_node = OmegaConf.to_container(OmegaConf.load(TINY_YAML))
    saved = {"model": model_node, "data": {"tokenizer": "/some/tokenizer_dir"},
             "hydra_only": "${hydra:runtime.output_dir}"}  # resolves only inside Hydra: must not be touched
    OmegaConf.save(OmegaConf.create(saved), run / ".hydra" / "config.yaml")
    torch.manual_seed(0)
    model = build_model(**tiny_fields(ByteTokenizer.vocab_size))
    old = save_weights(model, str(run / "pretrain_128.pth"))
    new = save_weights(model, str(run / "checkpoints" / "full_sft_128.pth"))
    save_weights(model, str(run / "full_sft_128_resume.pth"))  # a training checkpoint name: never picked
    os.utime(old, (1, 1))
    out, err = run_main(capsys, ["--model", str(run), "--prompt", "abc", "--greedy", "--max-new-tokens", "8"])
    assert new in err and out.strip()
    assert fake_tokenizer == ["/some/tokenizer_dir"]
    run_main(capsys, ["--model", str(run), "--prompt", "abc", "--greedy", "--max-new-tokens", "2",
                      "--tokenizer", "/other"])
    assert fake_tokenizer[-1] == "/other"


def test_errors(tmp_path, capsys, fake_tokenizer, weights):
    with pytest.raises(SystemExit) as info:
        gen.main(["--model", str(TINY_YAML), "--prompt", "x", "--top-p", "0"])
    assert info.value.code == 2 and "--top-p=0.0 is invalid" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="does not exist"):
        gen.main(["--model", str(tmp_path / "missing.yaml"), "--prompt", "x"])
    with pytest.raises(SystemExit, match="without .hydra/config.yaml"):
        gen.main(["--model", str(tmp_path), "--prompt", "x"])
    wrong = ROOT / "conf" / "model" / "minimind2_26m.yaml"  # 512 wide: the 128-wide weights do not fit
    with pytest.raises(SystemExit, match="model.embed_tokens.weight"):
        gen.main(["--model", str(wrong), "--weights", weights, "--prompt", "x"])


def test_streamer_holds_back_partial_characters():
    import io

    buf = io.StringIO()
    s = gen.TextStreamer(ByteTokenizer(), out=buf)
    s.put(torch.tensor([[1, 4]]))  # the prompt: not printed
    for b in "é!".encode():  # é is two bytes
        s.put(torch.tensor([[b + 3]]))
        assert "\ufffd" not in buf.getvalue()
    s.end()
    assert buf.getvalue() == "é!\n"


def _real_tokenizer_available():
    try:
        from minimind.data.tokenizer import load_tokenizer
        load_tokenizer(None)
        return True
    except (ImportError, ValueError, OSError):  # not written yet, or no demo assets yet
        return False


@pytest.mark.skipif(not _real_tokenizer_available(), reason="embedded demo tokenizer not available yet")
def test_cli_subprocess_with_demo_tokenizer(tmp_path):
    from minimind.data.tokenizer import load_tokenizer

    torch.manual_seed(0)
    path = save_weights(build_model(**tiny_fields(load_tokenizer(None).vocab_size)), str(tmp_path / "w.pth"))
    cmd = [sys.executable, "-m", "minimind.generate", "--model", str(TINY_YAML), "--weights", path,
           "--prompt", "hello", "--chat", "--greedy", "--max-new-tokens", "16", "--device", "cpu"]
    runs = [subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    assert runs[0].stdout == runs[1].stdout and "Model params:" in runs[0].stderr


# --------------------------------------------------------------------------- which weights, and a chat


class RecordingTokenizer(ByteTokenizer):
    """Records what the chat template was asked to render."""

    def __init__(self):
        self.renders = []

    def apply_chat_template(self, messages, add_generation_prompt=False, tools=None, **kwargs):
        self.renders.append(([dict(m) for m in messages], kwargs))
        return super().apply_chat_template(messages, add_generation_prompt)


def make_run(tmp_path, loop=None, hydra_cwd=None):
    """A run folder as launch.py leaves it: .hydra/config.yaml (+ hydra.yaml)."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    node = {"model": OmegaConf.to_container(OmegaConf.load(TINY_YAML)), "data": {"tokenizer": None}}
    if loop is not None:
        node["loop"] = loop
    OmegaConf.save(OmegaConf.create(node), run / ".hydra" / "config.yaml")
    if hydra_cwd is not None:
        OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"cwd": str(hydra_cwd)}}}), run / ".hydra" / "hydra.yaml")
    return run


def tiny_weights(path):
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_weights(build_model(**tiny_fields(ByteTokenizer.vocab_size)), str(path))


GREEDY = ["--prompt", "abc", "--greedy", "--max-new-tokens", "3", "--device", "cpu"]


def test_a_run_dir_uses_the_weights_its_records_name(tmp_path, capsys, fake_tokenizer):
    elsewhere = tiny_weights(tmp_path / "out" / "full_sft_128.pth")
    run = make_run(tmp_path, loop={"save_dir": str(tmp_path / "out"), "save_weight": "full_sft"})
    decoy = tiny_weights(run / "pretrain_128.pth")  # newer, in the run folder: not what the run recorded
    (run / "summary.json").write_text(json.dumps({"status": "completed", "weights": [elsewhere]}))
    _, err = run_main(capsys, ["--model", str(run)] + GREEDY)
    assert f"weights: {elsewhere}" in err and decoy not in err
    # killed before the summary: the last checkpoint event says where
    (run / "summary.json").unlink()
    other = tiny_weights(tmp_path / "out2" / "full_sft_128.pth")
    events = [{"event": "checkpoint", "step": 5, "weights": [elsewhere]},
              {"event": "checkpoint", "step": 10, "weights": [other]}]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + '{"event": "chec')
    _, err = run_main(capsys, ["--model", str(run)] + GREEDY)
    assert f"weights: {other}" in err


def test_a_run_dir_without_records_uses_its_configs_save_dir(tmp_path, capsys, fake_tokenizer):
    started_in = tmp_path / "project"
    expected = tiny_weights(started_in / "out" / "full_sft_128.pth")
    run = make_run(tmp_path, loop={"save_dir": "out", "save_weight": "full_sft"}, hydra_cwd=started_in)
    _, err = run_main(capsys, ["--model", str(run)] + GREEDY)
    assert f"weights: {expected}" in err


def test_no_weights_is_an_error_unless_random_init_is_asked_for(tmp_path, capsys, fake_tokenizer):
    run = make_run(tmp_path)
    with pytest.raises(SystemExit, match=r"recorded no weights and holds no \.pth: give --weights FILE "
                                         r"\(or --random-init"):
        gen.main(["--model", str(run)] + GREEDY)
    with pytest.raises(SystemExit, match="is a model config, not weights"):
        gen.main(["--model", str(TINY_YAML)] + GREEDY)
    _, err = run_main(capsys, ["--model", str(run), "--random-init"] + GREEDY)
    assert "--random-init: a randomly initialised model" in err
    (run / "summary.json").write_text(json.dumps({"weights": [str(tmp_path / "moved.pth")]}))
    with pytest.raises(SystemExit, match=r"recorded its weights at .*moved\.pth, which does not exist"):
        gen.main(["--model", str(run)] + GREEDY)


def test_the_note_says_why_decoding_stopped(capsys, fake_tokenizer, weights, monkeypatch):
    import minimind.model as model_module

    argv = ["--model", str(TINY_YAML), "--weights", weights, "--prompt", "hi", "--greedy", "--max-new-tokens", "5"]
    _, err = run_main(capsys, argv)
    assert err.strip().splitlines()[-1] == ("[stopped at --max-new-tokens=5: the reply may be cut; "
                                            "raise it to see more]")
    calls = []
    real = model_module.sample_next_token

    def eos_third(logits, *a, **k):
        calls.append(1)
        token = real(logits, *a, **k)
        return torch.full_like(token, ByteTokenizer.eos_token_id) if len(calls) == 3 else token

    monkeypatch.setattr(model_module, "sample_next_token", eos_third)
    _, err = run_main(capsys, argv)
    assert err.strip().splitlines()[-1] == "[end of text after 3 tokens]"


def test_the_chat_keeps_the_conversation_and_passes_the_thinking_switch(capsys, weights, monkeypatch):
    import io

    tok = RecordingTokenizer()
    monkeypatch.setattr(gen, "_load_tokenizer", lambda path: tok)
    monkeypatch.setattr(sys, "stdin", io.StringIO("first question\nsecond question\n\nnot read\n"))
    out, err = run_main(capsys, ["--model", str(TINY_YAML), "--weights", weights, "--greedy",
                                 "--max-new-tokens", "4", "--think"])
    assert len(tok.renders) == 2 and err.count("[stopped at --max-new-tokens=4") == 2
    first, second = tok.renders[0][0], tok.renders[1][0]
    assert first == [{"role": "user", "content": "first question"}]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert second[2]["content"] == "second question" and second[1]["content"] == out.splitlines()[0]
    assert tok.renders[0][1] == {"open_thinking": True, "enable_thinking": True}

    tok.renders.clear()
    monkeypatch.setattr(sys, "stdin", io.StringIO("a\nb\n"))
    run_main(capsys, ["--model", str(TINY_YAML), "--weights", weights, "--greedy", "--max-new-tokens", "2",
                      "--history", "0", "--no-think"])
    assert [len(m) for m, _ in tok.renders] == [1, 1]  # no history kept
    assert tok.renders[0][1] == {"open_thinking": False, "enable_thinking": False}


def test_cli_chat_and_missing_weights_in_a_subprocess(tmp_path):
    from minimind.data.tokenizer import load_tokenizer

    torch.manual_seed(0)
    path = save_weights(build_model(**tiny_fields(load_tokenizer(None).vocab_size)), str(tmp_path / "w.pth"))
    cmd = [sys.executable, "-m", "minimind.generate", "--model", str(TINY_YAML), "--greedy",
           "--max-new-tokens", "6", "--device", "cpu"]
    r = subprocess.run(cmd + ["--weights", path], input="hello\nand again\n", capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("[stopped at --max-new-tokens=6") + r.stderr.count("[end of text after") == 2  # two turns
    r = subprocess.run(cmd + ["--prompt", "x"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {TINY_YAML} is a model config, not weights: give "
                                             "--weights FILE (or --random-init for a randomly initialised model)"]
