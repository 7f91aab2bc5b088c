"""The demo chain, end to end, with the numbers the README quotes.

    python scripts/demo_chain.py              # run the five demo presets (weights in out/), then measure
    python scripts/demo_chain.py --measure    # only measure the weights already in out/

The chain (each a ``launch.py experiment=demo/<stage>`` run, in this order): ``sft`` (the tiny model
learns the demo dialogues), ``lora`` (identity facts through a LoRA), ``dpo`` (preferences from the
demo's tasks), ``teacher`` (the SFT demo at hidden 192 x 3 layers), ``distill`` (the tiny SFT model
learns from it). What is measured, on data no stage trained on where there is such data:

* LoRA: greedy exact-match accuracy on every identity question of ``lora_identity_eval.jsonl``
  (phrasings seen in training, and held-out phrasings), for the SFT model and with the LoRA; and
  the 16 capital questions of the SFT demo, to see what the LoRA costs the base's skills;
* DPO: on the 400 held-out pairs of ``dpo_heldout.jsonl``, the reward accuracy (chosen reward
  > rejected reward, rewards beta * (log pi - log ref) against the SFT model), the mean margin
  and the loss, in eval mode; and greedy exact-match accuracy of the right answer on their
  questions, SFT model vs DPO model;
* distillation: the first and last logged ce / kl of the run, and the token-mean cross-entropy on
  the held-out pairs' chosen replies for the student before and after, and for the teacher.

A script of the source checkout (it prints numbers, it asserts nothing), not part of the package.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("sft", "lora", "dpo", "teacher", "distill")


def run_stage(stage: str, runs: Path) -> float:
    t0 = time.time()
    cmd = [sys.executable, str(ROOT / "launch.py"), f"experiment=demo/{stage}", f"hydra.run.dir={runs / stage}",
           "loop.progress=false"]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)
    return time.time() - t0


def _model(weights: str, hidden: int = 128, layers: int = 2, lora: str | None = None):
    import torch  # noqa: F401

    from minimind.adapters import load_lora
    from minimind.data.tokenizer import load_tokenizer
    from minimind.model import build_model
    from minimind.weights import load_weights

    model = build_model(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                        vocab_size=load_tokenizer(None).vocab_size, max_position_embeddings=2048)
    load_weights(model, weights)
    if lora:
        load_lora(model, lora, attach=True)
    return model.eval()


def _answer(model, tok, question: str) -> str:
    import torch

    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True))
    out = model.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False, eos_token_id=tok.eos_token_id)
    return tok.decode(out[0, len(ids):].tolist(), skip_special_tokens=True).strip()


def _accuracy(model, tok, qa) -> float:
    return sum(_answer(model, tok, q) == a for q, a in qa) / max(len(qa), 1)


def _jsonl(name: str):
    from minimind.data import asset_path

    return [json.loads(x) for x in open(asset_path(f"demo/{name}"), encoding="utf-8").read().splitlines()]


def measure_lora(out: Path, tok) -> dict:
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_demo import COUNTRIES

    rows = _jsonl("lora_identity_eval.jsonl")
    seen = [(r["conversations"][0]["content"], r["conversations"][1]["content"]) for r in rows if not r["heldout"]]
    held = [(r["conversations"][0]["content"], r["conversations"][1]["content"]) for r in rows if r["heldout"]]
    capitals = [(f"What is the capital of {c}?", f"The capital of {c} is {city}.") for c, city in COUNTRIES.items()]
    res = {}
    for name, lora in (("sft", None), ("lora", str(out / "lora_identity_128.pth"))):
        model = _model(str(out / "full_sft_128.pth"), lora=lora)
        res[name] = {"facts_seen": _accuracy(model, tok, seen), "facts_heldout_phrasing": _accuracy(model, tok, held),
                     "capitals": _accuracy(model, tok, capitals)}
    res["n"] = {"facts_seen": len(seen), "facts_heldout_phrasing": len(held), "capitals": len(capitals)}
    model = _model(str(out / "full_sft_128.pth"), lora=str(out / "lora_identity_128.pth"))
    res["examples"] = {q: _answer(model, tok, q) for q in ("What is your name?", "Who made you?",
                                                           "Where are you from?", "What is the capital of Zorvia?")}
    return res


def measure_dpo(out: Path, tok, beta: float = 0.1) -> dict:
    import torch
    from torch.utils.data import default_collate

    from minimind.data import asset_path
    from minimind.data.dpo import DPODataset
    from minimind.objectives import dpo_loss, sequence_logprobs

    ds = DPODataset(asset_path("demo/dpo_heldout.jsonl"), max_length=128)
    ref = _model(str(out / "full_sft_128.pth"))
    res = {}
    for name, weights in (("start (policy = SFT model)", "full_sft_128.pth"), ("dpo", "dpo_128.pth")):
        policy = _model(str(out / weights))
        acc = margin = loss = 0.0
        with torch.no_grad():
            for start in range(0, len(ds), 50):
                x, y = default_collate(ds.__getitems__(list(range(start, min(start + 50, len(ds))))))
                b = x.shape[0] // 2
                pi, rf = sequence_logprobs(policy(x).logits, y), sequence_logprobs(ref(x).logits, y)
                lo, c, r = dpo_loss(pi[:b], pi[b:], rf[:b], rf[b:], beta)
                acc += float((c > r).sum())
                margin += float((c - r).sum())
                loss += float(lo.sum())
        res[name] = {"reward_acc": acc / len(ds), "margin": margin / len(ds), "loss": loss / len(ds)}
    pairs = _jsonl("dpo_heldout.jsonl")
    qa = [(p["chosen"][0]["content"], p["chosen"][1]["content"]) for p in pairs]
    res["answer_accuracy"] = {name: _accuracy(_model(str(out / w)), tok, qa)
                              for name, w in (("sft", "full_sft_128.pth"), ("dpo", "dpo_128.pth"))}
    res["pairs"] = len(ds)
    return res


def _heldout_ce(model, ds) -> float:
    import torch
    from torch.utils.data import default_collate

    from minimind.model import causal_lm_loss, count_loss_tokens

    total = n = 0.0
    with torch.no_grad():
        for start in range(0, len(ds), 50):
            x, y = default_collate([ds[i] for i in range(start, min(start + 50, len(ds)))])
            total += float(causal_lm_loss(model(x).logits, y, reduction="sum"))
            n += int(count_loss_tokens(y))
    return total / n


def measure_distill(out: Path, runs: Path) -> dict:
    from minimind.data.sft import SFTDataset

    res = {}
    metrics = runs / "distill" / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(x) for x in metrics.read_text().splitlines()]
        evals = [r for r in rows if r.get("kind") == "eval"]
        rows = [r for r in rows if "kind" not in r]  # the training rows; eval rows hold val_*
        res["logged"] = {"first": {k: rows[0][k] for k in ("step", "loss", "ce", "kl")},
                         "last": {k: rows[-1][k] for k in ("step", "loss", "ce", "kl")}}
        if evals:
            res["val"] = {k: evals[-1].get(k) for k in ("step", "val_loss", "val_ce", "val_kl")}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "heldout.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for p in _jsonl("dpo_heldout.jsonl"):
                f.write(json.dumps({"conversations": p["chosen"]}) + "\n")
        ds = SFTDataset(path, max_length=128)
        res["heldout_ce"] = {
            "student before (full_sft_128)": _heldout_ce(_model(str(out / "full_sft_128.pth")), ds),
            "student after (full_dist_128)": _heldout_ce(_model(str(out / "full_dist_128.pth")), ds),
            "teacher (full_sft_192)": _heldout_ce(_model(str(out / "full_sft_192.pth"), hidden=192, layers=3), ds),
        }
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/demo_chain.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--measure", action="store_true", help="only measure the weights already in --out")
    p.add_argument("--out", default="out", help="the presets' loop.save_dir (default: out)")
    p.add_argument("--runs", default="outputs/demo_chain", help="run folders of the stages")
    args = p.parse_args(argv)
    out, runs = Path(args.out), Path(args.runs)
    if not args.measure:
        times = {stage: run_stage(stage, runs) for stage in STAGES}
        print(json.dumps({"wall_s": {k: round(v) for k, v in times.items()}}, indent=2))
    import torch

    from minimind.data.tokenizer import load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer(None)
    report = {"lora": measure_lora(out, tok), "dpo": measure_dpo(out, tok), "distill": measure_distill(out, runs)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
