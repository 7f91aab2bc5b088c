"""Input under hostile use: checks before training (max_length vs the RoPE table, ``--cfg job``,
``+key=`` that nothing reads), errors in DataLoader workers as one line, SFT roles and the
labels of replies with leading whitespace, empty pretrain texts in the data stats."""

from __future__ import annotations

import json
import random
import shutil

import pytest
from conftest import CONF, FAST, ROOT

from minimind.config import validate
from minimind.data import DataError, PretrainDataset, SFTDataset, asset_path, load_tokenizer
from minimind.errors import ConfigError
from minimind.overrides import check_overrides


def error_lines(r) -> list:
    return [line for line in r.stderr.splitlines() if line.startswith("Error: ")]


# ------------------------------------------------------------------ 5. checked before training


def test_max_length_beyond_the_rope_table_is_refused(cfg_factory):
    with pytest.raises(ConfigError) as e:
        validate(cfg_factory(["model.max_position_embeddings=32"]))  # FAST: data.max_length=64
    assert "data.max_length=64 is invalid" in str(e.value)
    assert "model.max_position_embeddings=32" in str(e.value)
    validate(cfg_factory(["model.max_position_embeddings=64"]))


@pytest.mark.slow
def test_max_length_beyond_the_rope_table_is_refused_before_training(launch, tmp_path):
    r = launch(FAST + ["model.max_position_embeddings=32", "loop.max_steps=2", f"hydra.run.dir={tmp_path}/run"],
               cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
    [line] = error_lines(r)
    assert "data.max_length=64" in line and "model.max_position_embeddings=32" in line
    assert "Model params" not in r.stdout + r.stderr  # before anything was built


@pytest.mark.slow
def test_cfg_job_applies_the_value_checks_without_importing_torch(launch, tmp_path):
    probe = ("import sys, runpy; sys.argv=['launch.py','--cfg','job','optim.grad_clip=-1'];"
             "\ntry:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as e:\n    print('EXIT', e.code)\n"
             "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH')")
    r = launch([], cwd=ROOT, module=["-c", probe])
    assert "EXIT 2" in r.stdout and "NO_TORCH" in r.stdout, r.stdout + r.stderr
    [line] = error_lines(r)
    assert "optim.grad_clip=-1.0 is invalid: must be > 0" in line
    r = launch(["--cfg", "job", "model.max_position_embeddings=32", "data.max_length=64"], cwd=tmp_path)
    assert r.returncode == 2 and "model.max_position_embeddings=32" in r.stderr
    r = launch(["--cfg", "job", "optim.grad_clip=0.5"], cwd=tmp_path)  # a good config still prints
    assert r.returncode == 0 and "grad_clip: 0.5" in r.stdout, r.stderr


@pytest.mark.parametrize("arg,needle", [
    ("+optim.gradclip=0.01", "unknown config key 'optim.gradclip' (did you mean optim.grad_clip?)"),
    ("++optim.gradclip=0.01", "unknown config key 'optim.gradclip'"),
    ("+data.foo=1", "unknown config key 'data.foo'"),
    ("+loop.save_every=3", "unknown config key 'loop.save_every'"),
    ("+seeed=3", "unknown config key 'seeed' (did you mean seed?)"),
    ("+optim.lr=abc", "optim.lr='abc' is invalid: expected a float"),
])
def test_a_plus_key_that_nothing_reads_is_refused(arg, needle):
    problem = check_overrides([arg], CONF)
    assert problem is not None and needle in problem, problem


@pytest.mark.parametrize("arg", [
    "+optim.optimizer.amsgrad=true",       # free-form node: the optimizer's own arguments
    "+precision.scaler.growth_interval=10",
    "+data.dataset.extra=1",
    "+hydra.job.env_set.FOO=1",            # Hydra's own tree
    "++hydra.run.dir=/tmp/x",
    "+experiment=clip_accum_sweep",        # a group appended to the defaults
])
def test_legitimate_plus_overrides_pass(arg):
    assert check_overrides([arg], CONF) is None


@pytest.mark.slow
def test_plus_typo_is_refused_on_the_command_line(launch, tmp_path):
    r = launch(FAST + ["+optim.gradclip=0.01", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    [line] = error_lines(r)
    assert "unknown config key 'optim.gradclip' (did you mean optim.grad_clip?)" in line
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ 7. errors in DataLoader workers


@pytest.mark.slow
def test_an_error_in_a_dataloader_worker_is_the_same_one_line(launch, tmp_path):
    tok = tmp_path / "tok"
    shutil.copytree(asset_path("demo/tokenizer"), tok)
    cfg = json.loads((tok / "tokenizer_config.json").read_text())
    cfg["chat_template"] = ("{% for m in messages %}{% if m.content == 'boom' %}"
                            "{{ raise_exception('this template refuses boom') }}{% endif %}"
                            "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}")
    (tok / "tokenizer_config.json").write_text(json.dumps(cfg))
    rows = [{"conversations": [{"role": "user", "content": f"hi {i}"},
                               {"role": "assistant", "content": "boom" if i == 30 else f"yo {i}"}]}
            for i in range(40)]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = {}
    for workers in (0, 2):
        r = launch(FAST + [f"data.path={data}", f"data.tokenizer={tok}", f"data.num_workers={workers}",
                           f"hydra.run.dir={tmp_path}/run{workers}"], cwd=tmp_path)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "Traceback" not in r.stderr and "worker process" not in r.stderr, r.stderr
        [lines[workers]] = error_lines(r)
    assert lines[2] == lines[0]
    assert f"{data}, line 31" in lines[0] and "this template refuses boom" in lines[0]
    summary = json.loads((tmp_path / "run2" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == "DataError: " + lines[0][len("Error: "):]


# ------------------------------------------------------------------ 8. SFT roles, labels, empty texts


def test_an_unknown_role_names_file_line_and_the_valid_roles(tmp_path):
    rows = [{"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
            {"conversations": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as e:
        SFTDataset(str(path), None, max_length=64)
    msg = str(e.value)
    assert f"{path}, line 2" in msg and "'human'" in msg
    assert "system, user, assistant, tool" in msg


def minimind2_labels(ids, tok):
    """MiniMind2's labelling rule (upstream c090b69, dataset/lm_dataset.py), written out here:
    after each ``<|im_start|>assistant`` the next token (the newline, with whatever whitespace
    the BPE merged into it) is skipped; labels run through ``<|im_end|>`` and the token after."""
    start_seq = tok.encode(f"{tok.bos_token}assistant")
    end_seq = tok.encode(tok.eos_token)
    n, labels, i = len(ids), [-100] * len(ids), 0
    while i < n:
        if ids[i:i + len(start_seq)] != start_seq:
            i += 1
            continue
        start = end = i + len(start_seq)
        while end < n and ids[end:end + len(end_seq)] != end_seq:
            end += 1
        for j in range(start + 1, min(end + len(end_seq) + 1, n)):
            labels[j] = ids[j]
        i = end + len(end_seq) if end < n else n
    return labels


@pytest.fixture(scope="module")
def ws_tokenizer(tmp_path_factory):
    """MiniMind2's recipe (byte-level BPE, MiniMind2's chat template) trained on text with
    indented lines, so that a newline and the spaces or tabs after it merge into one token, as
    in MiniMind2's own tokenizer."""
    from minimind.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("wstok")
    rng = random.Random(1)
    words = "alpha beta gamma delta answer list item code line".split()
    corpus = root / "corpus.jsonl"
    with open(corpus, "w") as f:
        for _ in range(400):
            body = "".join(f"\n{rng.choice(['  ', '   ', chr(9), chr(9) * 2, '    '])}{rng.choice(words)}"
                           for _ in range(8))
            f.write(json.dumps({"text": rng.choice(words) + body}) + "\n")
    return train_tokenizer([str(corpus)], str(root / "tok"), vocab_size=360, show_progress=False)


REPLIES = ["alpha beta", " alpha", "  alpha beta", "   gamma", "\talpha", "\t\tbeta", "\n\nalpha",
           "\n  code line", "    item"]


def test_replies_with_leading_whitespace_are_labelled_as_upstream(tmp_path, ws_tokenizer):
    tok = load_tokenizer(ws_tokenizer)
    header = tok.encode(f"{tok.bos_token}assistant\n")
    merged = [r for r in REPLIES if tok.encode(f"{tok.bos_token}assistant\n{r}")[:len(header)] != header]
    assert len(merged) >= 3, merged  # the newline merged with the reply's whitespace: the hard case
    rows = [{"conversations": [{"role": "user", "content": "list"}, {"role": "assistant", "content": r}]}
            for r in REPLIES]
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    for pretokenize in (False, True):
        ds = SFTDataset(str(path), ws_tokenizer, max_length=64, pretokenize=pretokenize)
        for i, reply in enumerate(REPLIES):
            ids, labels = (t.tolist() for t in ds[i])
            assert labels == minimind2_labels(ids, tok), (reply, labels)
            assert sum(x != -100 for x in labels) >= 2, reply  # the reply is trained on
            trained = tok.decode([x for x in labels if x != -100], skip_special_tokens=False)
            assert trained.endswith(reply.lstrip("\n")[-4:] + "<|im_end|>\n"), (reply, trained)


def test_empty_pretrain_texts_are_counted(tmp_path, cfg_factory):
    rows = [{"text": "alpha beta"}, {"text": ""}, {"text": "gamma"}, {"text": "   "}] * 4
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for pretokenize in (False, True):
        ds = PretrainDataset(str(path), None, max_length=16, pretokenize=pretokenize)
        ds.__getitems__(list(range(len(ds))))
        assert ds.stats()["empty_texts"] == 8, pretokenize
    from minimind.train import build_and_fit

    cfg = cfg_factory(["data=pretrain", f"data.path={path}", "data.num_workers=0", "data.max_length=16",
                       "data.shuffle=false", "loop.save_interval=100"])
    summary = build_and_fit(cfg, tmp_path / "run")
    assert summary["data_empty_texts"] == 8 and summary["data_samples_seen"] == 16
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["data_empty_texts"] == 8


def test_label_rows_match_the_reference_with_merged_newlines():
    """The batched labels equal the reference rule when the marker's newline may be another
    token (random rows, markers overlapping and cut at the end)."""
    import numpy as np

    from minimind.data.labels import assistant_label_rows, assistant_labels

    rng = random.Random(9)
    alphabet = [0, 1, 2, 3, 4, 5, 6, 7, 256, 2**40]
    for _ in range(3000):
        start = [rng.choice([1, 2, 3]) for _ in range(rng.randint(2, 3))]
        end = [rng.choice([3, 4]) for _ in range(rng.randint(1, 2))]
        alts = rng.sample([5, 6, 7, 256], rng.randint(0, 2))
        row = np.array([rng.choice(alphabet) for _ in range(rng.randint(1, 24))])
        want = assistant_labels(row.tolist(), start, end, alts)
        assert assistant_label_rows(row, start, end, alts).tolist() == want, (row, start, end, alts)
    assert assistant_labels([1, 2, 5, 9, 3], [1, 2, 8], [3], [5]) == [-100, -100, -100, 9, 3]
    assert assistant_labels([1, 2, 5, 9, 3], [1, 2, 8], [3]) == [-100] * 5  # d65ef2c's exact marker
