"""`python -m minimind.generate`: model YAML or run directory, weights, streaming, greedy determinism."""

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
