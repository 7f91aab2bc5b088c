"""``scripts/``: the generators beside the package still write what the package ships."""

from __future__ import annotations

import pytest
from conftest import ROOT, run_launch

DEMO = ROOT / "minimind" / "data" / "assets" / "demo"


@pytest.mark.slow
def test_make_demo_rewrites_the_shipped_bytes(tmp_path):
    """Same seed, same bytes: the demo data and tokenizer regenerate exactly (about 10 s)."""
    out = tmp_path / "demo"
    p = run_launch(["--out", str(out)], cwd=tmp_path, module=[str(ROOT / "scripts" / "make_demo.py")])
    assert p.returncode == 0, p.stderr[-3000:]
    for name in ("sft.jsonl", "pretrain.jsonl", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
                 "lora_identity.jsonl", "lora_identity_eval.jsonl", "dpo.jsonl", "dpo_heldout.jsonl"):
        assert (out / name).read_bytes() == (DEMO / name).read_bytes(), name
