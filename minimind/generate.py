"""Generate text from a MiniMind model: ``python -m minimind.generate``.

    # a run directory: its .hydra/config.yaml gives the model and tokenizer, its newest .pth the weights
    python -m minimind.generate --model outputs/2025-01-01_12-00-00 --prompt "Hello" --chat
    # a model YAML + upstream weights + tokenizer directory
    python -m minimind.generate --model conf/model/minimind2_26m.yaml --weights full_sft_512.pth \
        --tokenizer /path/to/minimind_tokenizer --prompt "你好" --chat --greedy
    # a LoRA: base weights + the LoRA file (a LoRA run's directory finds both by itself)
    python -m minimind.generate --model conf/model/minimind2_26m.yaml --weights full_sft_512.pth \
        --lora lora_identity_512.pth --prompt "Who are you?" --chat

Text is streamed to stdout as it is generated; the model summary and notes go to stderr.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Any

DROP_KEYS = ("_target_", "from_weight")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m minimind.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True,
                   help="a model YAML (conf/model/minimind2_26m.yaml), or a run directory "
                        "holding .hydra/config.yaml")
    p.add_argument("--weights", default=None,
                   help="upstream-format .pth/.safetensors; default with a run dir: "
                        "its newest inference weights")
    p.add_argument("--lora", default=None,
                   help="a LoRA file (upstream's format) added to --weights; default with a LoRA run dir: "
                        "its LoRA file, on the run's model.from_weight")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory; default: the run's data.tokenizer, "
                        "else the embedded demo tokenizer")
    p.add_argument("--prompt", required=True, help="text to continue (or the user message with --chat)")
    p.add_argument("--chat", action="store_true",
                   help="wrap the prompt as a user message with the tokenizer's chat template")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.85)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=0.85, help="1.0 = off")
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--greedy", action="store_true", help="argmax decoding (deterministic)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    args = p.parse_args(argv)
    if args.max_new_tokens < 1:
        p.error(f"--max-new-tokens={args.max_new_tokens} is invalid: must be >= 1")
    if args.temperature < 0:
        p.error(f"--temperature={args.temperature} is invalid: must be >= 0 (0 = greedy)")
    if not 0 < args.top_p <= 1:
        p.error(f"--top-p={args.top_p} is invalid: must be in (0, 1]")
    if args.top_k < 0:
        p.error(f"--top-k={args.top_k} is invalid: must be >= 0")
    if args.repetition_penalty <= 0:
        p.error(f"--repetition-penalty={args.repetition_penalty} is invalid: must be > 0")
    return args


def _newest_weights(run_dir: str) -> str | None:
    """The run's inference weights: those its summary.json names (they may be in loop.save_dir,
    outside the run dir), else the newest under the run dir (not *_resume.pth checkpoints)."""
    try:
        with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
            named = [p for p in json.load(f).get("weights_files") or [] if os.path.isfile(p)]
    except (OSError, ValueError):
        named = []
    if named:
        return named[0]
    found = [f for pattern in ("*.pth", "*.safetensors")
             for f in glob.glob(os.path.join(run_dir, "**", pattern), recursive=True)
             if not os.path.basename(f).endswith("_resume.pth")]
    return max(found, key=os.path.getmtime) if found else None


def resolve_model_source(model: str) -> tuple[dict[str, Any], str | None, str | None]:
    """(model fields, default weights, default tokenizer) from a model YAML or a run directory."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if os.path.isdir(model):
        cfg_path = os.path.join(model, ".hydra", "config.yaml")
        if not os.path.isfile(cfg_path):
            raise SystemExit(f"error: --model {model} is a directory without .hydra/config.yaml; "
                             "expected a run directory (outputs/<run>) or a model YAML file")
        cfg = OmegaConf.load(cfg_path)
        if "model" not in cfg:
            raise SystemExit(f"error: {cfg_path} has no 'model' section")
        node = cfg.model
        tokenizer = None
        try:
            tok = OmegaConf.select(cfg, "data.tokenizer")
            if isinstance(tok, str):
                tokenizer = tok
            elif tok is not None and "path" in tok:
                tokenizer = tok.path
        except OmegaConfBaseException:  # an interpolation that only resolves inside the training run
            tokenizer = None
        weights = _newest_weights(model)
    elif os.path.isfile(model):
        cfg_path = model
        node = OmegaConf.load(model)
        if "model" in node and "_target_" not in node:  # a whole composed config
            node = node.model
        tokenizer, weights = None, None
    else:
        raise SystemExit(f"error: --model {model} does not exist; expected a model YAML or a run directory")
    try:
        fields = OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as err:
        raise SystemExit(f"error: cannot resolve the model config in {cfg_path}: {err}") from None
    return {k: v for k, v in fields.items() if k not in DROP_KEYS}, weights, tokenizer


def _run_base_weight(model: str) -> str | None:
    """The weights a run started from (its model.from_weight), for a LoRA run directory."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cfg_path = os.path.join(model, ".hydra", "config.yaml")
    if not os.path.isfile(cfg_path):
        return None
    try:
        value = OmegaConf.select(OmegaConf.load(cfg_path), "model.from_weight")
    except OmegaConfBaseException:
        return None
    return str(value) if value else None


def _load_tokenizer(path: str | None):
    from minimind.data.tokenizer import load_tokenizer
    return load_tokenizer(path)


class TextStreamer:
    """Prints the decoded continuation as tokens arrive (transformers' put/end protocol, batch of 1).

    Decodes the whole continuation each time and prints the new suffix, holding back a trailing
    replacement character: byte-level BPE can split one UTF-8 character over several tokens.
    """

    def __init__(self, tokenizer, out=None):
        self.tokenizer, self.out = tokenizer, out if out is not None else sys.stdout
        self.ids: list = []
        self.printed = 0
        self.seen_prompt = False

    def put(self, ids) -> None:
        if not self.seen_prompt:  # the first call carries the prompt
            self.seen_prompt = True
            return
        self.ids.extend(int(i) for i in ids.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        self.out.write(text[self.printed:])
        self.out.flush()
        self.printed = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        self.out.write(text[self.printed:] + "\n")
        self.out.flush()
        self.printed = len(text)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from minimind.model import MiniMindConfig, MiniMindForCausalLM, model_summary
    from minimind.weights import WeightsError, load_weights

    fields, run_weights, run_tokenizer = resolve_model_source(args.model)
    tokenizer = _load_tokenizer(args.tokenizer if args.tokenizer is not None else run_tokenizer)
    if fields.get("vocab_size") is None:
        fields["vocab_size"] = tokenizer.vocab_size
    try:
        model = MiniMindForCausalLM(MiniMindConfig(**fields))
    except (TypeError, ValueError) as err:
        raise SystemExit(f"error: model config from {args.model}: {err}") from None

    from minimind.adapters import is_lora_file, load_lora

    weights, lora = args.weights or run_weights, args.lora
    try:
        if lora is None and weights and is_lora_file(weights):  # a LoRA run: its file holds only B, A
            lora, weights = weights, _run_base_weight(args.model) if os.path.isdir(args.model) else None
            if not weights:
                raise SystemExit(f"error: {lora} is a LoRA file; give the base weights it was trained on "
                                 "with --weights BASE --lora LORA")
        if weights:
            load_weights(model, weights)
        if lora:
            load_lora(model, lora, attach=True)
    except WeightsError as err:
        raise SystemExit(f"error: {err}") from None
    if weights:
        print(f"{model_summary(model)}; weights: {weights}" + (f" + LoRA {lora}" if lora else ""), file=sys.stderr)
    else:
        print(f"{model_summary(model)}; no --weights given: a randomly initialised model", file=sys.stderr)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    if args.seed is not None:
        torch.manual_seed(args.seed)

    if args.chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}],
                                             add_generation_prompt=True)
        ids = tokenizer.encode(text)
    else:
        # pretraining samples start with bos (MiniMind's pretrain data); continue from the same state
        bos = getattr(tokenizer, "bos_token_id", None)
        ids = ([bos] if bos is not None else []) + tokenizer.encode(args.prompt)
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)

    model.generate(input_ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                   do_sample=not args.greedy, eos_token_id=tokenizer.eos_token_id,
                   streamer=TextStreamer(tokenizer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
