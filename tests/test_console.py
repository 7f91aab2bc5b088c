"""The terminal a user watches: one ETA, the loss on the bar, lines that fit 120 columns, log lines
that never land inside the bar, notes about what was loaded and truncated."""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest
from conftest import FAST, LAUNCH, compose
from terminal import run_on_terminal, screen_segments

from minimind.console import ConsoleFormatter
from minimind.tracking import console_line

PREFIX = "[12:00:00] "  # ConsoleFormatter's prefix for the run's own lines
DEMO = {"epoch": 1, "epochs": 1, "step": 500, "total_steps": 1000, "loss": 0.9383, "lr": 2.757e-4,
        "grad_norm": 1.333, "scale": None, "skipped": 0, "tokens_per_s": 14110.0, "elapsed_s": 50.0,
        "eta_s": 50.0}


def test_console_lines_fit_120_columns_with_their_prefix():
    demo = console_line(DEMO)
    assert demo == "Epoch:[1/1](500/1000) loss:0.9383 lr:2.76e-04 grad_norm:1.333 tok/s:14110 ETA:0m50s"
    big_fp16 = dict(DEMO, epoch=2, epochs=3, step=54321, total_steps=99999, loss=2.3456, grad_norm=123.456,
                    scale=65536.0, skipped=17, tokens_per_s=987654.0, eta_s=36000 + 5 * 60)
    line = console_line(big_fp16)
    assert "grad_norm:123.5 scale:65536 skipped:17 tok/s:988k ETA:10h05m" in line
    assert [console_line(dict(DEMO, grad_norm=g)).split()[3] for g in (2.42, 12.345, 1234.5)] == \
        ["grad_norm:2.420", "grad_norm:12.35", "grad_norm:1234"]
    moe = console_line(dict(big_fp16, aux_loss=0.0123, scale=None, skipped=0))  # bf16 MoE
    for text in (demo, line, moe):
        assert len(PREFIX + text) <= 120, (len(PREFIX + text), text)
    # fp32 / bf16: no loss scale, no "skipped:0" noise
    assert "scale" not in demo and "skipped" not in demo


def _record(name, level, msg):
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_the_console_prefix_is_short_for_our_lines_and_hydras_for_the_rest():
    f = ConsoleFormatter()
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] hello", f.format(_record("minimind", logging.INFO, "hello")))
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] x", f.format(_record("minimind.data.base", logging.INFO, "x")))
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\]\[minimind\]\[WARNING\] - careful",
                        f.format(_record("minimind", logging.WARNING, "careful")))
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\]\[hydra\]\[INFO\] - other",
                        f.format(_record("hydra", logging.INFO, "other")))


def test_hydras_console_handler_uses_it_and_the_log_file_keeps_the_full_format():
    cfg = compose([], return_hydra_config=True)
    logging_cfg = cfg.hydra.job_logging
    assert logging_cfg.formatters.console["()"] == "minimind.console.ConsoleFormatter"
    assert logging_cfg.handlers.console.formatter == "console"
    assert logging_cfg.handlers.file.formatter == "simple"
    # Hydra's own options still replace it as a whole (a merged fragment would break "disabled")
    assert "handlers" not in compose(["hydra/job_logging=disabled"], return_hydra_config=True).hydra.job_logging


@pytest.mark.slow
def test_the_terminal_during_a_run(tmp_path):
    from minimind.data.tokenizer import load_tokenizer
    from minimind.model import build_model
    from minimind.weights import save_weights

    start = tmp_path / "start_64.pth"
    save_weights(build_model(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             vocab_size=load_tokenizer(None).vocab_size), str(start))
    args = [a for a in FAST if not a.startswith("loop.progress")] + [
        "loop.max_steps=20", "loop.log_interval=5", "data.num_workers=2", f"model.from_weight={start}"]
    rc, out = run_on_terminal([sys.executable, str(LAUNCH)] + args, cwd=tmp_path, columns=120)
    assert rc == 0, out[-3000:]
    segments = screen_segments(out)

    bars = [s for s in segments if "%|" in s]
    logs = [s for s in segments if re.match(r"\[\d\d:\d\d:\d\d\]", s)]
    assert bars and logs
    # a log line never shares a terminal row with the bar, and every row fits 120 columns
    assert not [s for s in segments if "%|" in s and re.search(r"\[\d\d:\d\d:\d\d\]", s)]
    for s in segments:
        if "/" not in s.split("|")[-1] or "%|" in s:  # lines that print a path are as long as the path
            assert len(s) <= 120, (len(s), s)
    for m in re.finditer(r"\[\d\d:\d\d:\d\d\] ", out):
        assert m.start() == 0 or out[m.start() - 1] in "\r\n", out[max(0, m.start() - 80):m.end()]

    # one ETA: the bar shows the loss and the ETA of the line just printed, and no tqdm estimate
    epoch_lines = [(out.index(s), s) for s in logs if "Epoch:[" in s]
    assert [re.search(r"\((\d+)/20\)", s).group(1) for _, s in epoch_lines] == ["5", "10", "15", "20"]
    for pos, line in epoch_lines:
        loss, eta = re.search(r"loss:(\S+)", line).group(1), re.search(r"ETA:(\S+)", line).group(1)
        after = next(s for s in screen_segments(out[pos + len(line):]) if "%|" in s)
        assert f"loss:{loss} ETA:{eta}" in after, (line, after)
    assert all("<" not in b and "it/s" not in b and "step/s" not in b for b in bars)

    # what was loaded, what was truncated, where the run is
    loaded = next(s for s in logs if "model.from_weight: loaded" in s)
    n = re.search(r"\((\d+) of the model's (\d+) tensors\)", loaded)
    assert str(start) in loaded and n and n.group(1) == n.group(2) and int(n.group(1)) > 10
    assert any(re.search(r"data: \d+ of the first \d+ samples were cut to data.max_length=64", s) for s in logs)
    folders = [s for s in logs if "run folder: outputs/" in s]
    assert len(folders) == 2  # at the start and at the end

    run = next((tmp_path / "outputs").glob("*/*"))
    summary = json.loads((run / "summary.json").read_text())
    # samples trained on (20 steps x batch 4), not the ones the 2 workers read ahead
    assert summary["data_samples_seen"] == 80
    assert summary["data_truncated"] > 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for key in ("step", "total_steps", "epoch", "epochs", "loss", "loss_avg", "lr", "grad_norm", "scale",
                "skipped", "tokens", "tokens_per_s", "elapsed_s", "eta_s", "samples_in_epoch"):
        assert key in metrics[0], key
