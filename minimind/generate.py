"""Generate text from a MiniMind model: ``python -m minimind.generate``.

    # a run directory: its .hydra/config.yaml gives the model and tokenizer, its records the weights
    python -m minimind.generate --model outputs/2026-11-28/06-22-21 --prompt "Hello" --chat
    # no --prompt: a multi-turn chat on the terminal (an empty line or Ctrl-D ends it)
    python -m minimind.generate --model outputs/2026-11-28/06-22-21
    # a model YAML + upstream weights + tokenizer directory; MiniMind-3's thinking on
    python -m minimind.generate --model conf/model/minimind3_64m.yaml --weights full_sft_768.pth \
        --tokenizer /path/to/minimind/model --prompt "你好" --chat --think
    # a LoRA: base weights + the LoRA file (a LoRA run's directory finds both by itself)
    python -m minimind.generate --model conf/model/minimind2_26m.yaml --weights full_sft_512.pth \
        --lora lora_identity_512.pth --prompt "Who are you?" --chat

The weights of a run directory are the ones the run recorded (summary.json, else the newest
checkpoint record in events.jsonl: also when ``loop.save_dir`` put them elsewhere), else the
file its config names, else the newest ``*.pth`` in the folder. No weights is an error; a
randomly initialised model only with ``--random-init``. Text is streamed to stdout as it is
generated; the model summary and notes (why decoding stopped) go to stderr.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import Any, Optional

DROP_KEYS = ("_target_", "from_weight")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m minimind.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True,
                   help="a model YAML (conf/model/minimind2_26m.yaml), or a run directory "
                        "holding .hydra/config.yaml")
    p.add_argument("--weights", default=None,
                   help="upstream-format .pth/.safetensors; default with a run dir: the weights it recorded")
    p.add_argument("--random-init", action="store_true",
                   help="no weights: a randomly initialised model (to test the plumbing)")
    p.add_argument("--lora", default=None,
                   help="a LoRA file (upstream's format) added to --weights; default with a LoRA run dir: "
                        "its LoRA file, on the run's model.from_weight")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory; default: the run's data.tokenizer, "
                        "else the embedded demo tokenizer")
    p.add_argument("--prompt", default=None,
                   help="text to continue (or the user message with --chat); none: an interactive chat")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap the prompt as a user message with the tokenizer's chat template "
                        "(default: on for the interactive chat, off for --prompt)")
    p.add_argument("--think", action=argparse.BooleanOptionalAction, default=None,
                   help="MiniMind-3's thinking switch: the chat template's open_thinking / enable_thinking "
                        "(default: the template's own, MiniMind-3: off)")
    p.add_argument("--history", type=int, default=None,
                   help="interactive chat: earlier messages kept in the prompt (default: all; 0: none)")
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
    if args.history is not None and args.history < 0:
        p.error(f"--history={args.history} is invalid: must be >= 0")
    if args.weights and args.random_init:
        p.error("--weights and --random-init exclude each other")
    if args.chat is None:
        args.chat = args.prompt is None
    return args


def _newest_weights(run_dir: str) -> str | None:
    """Newest inference weights under a run dir (not the *_resume.pth training checkpoints)."""
    found = [f for pattern in ("*.pth", "*.safetensors")
             for f in glob.glob(os.path.join(run_dir, "**", pattern), recursive=True)
             if not os.path.basename(f).endswith("_resume.pth")]
    return max(found, key=os.path.getmtime) if found else None


def _configured_weights(run_dir: str, cfg) -> Optional[str]:
    """The file the run's config names: loop.save_dir / {save_weight}_{hidden}[_moe].pth (a relative
    save_dir is relative to the folder the run was started from, which Hydra records)."""
    from omegaconf import OmegaConf

    from minimind.weights import weights_filename

    try:
        save_dir = OmegaConf.select(cfg, "loop.save_dir")
        stem = OmegaConf.select(cfg, "loop.save_weight")
        model = {"hidden_size": cfg.model.hidden_size, "use_moe": cfg.model.get("use_moe", False)}
    except Exception:  # noqa: BLE001 - an old or partial config: the other rules still apply
        return None
    if not stem:
        return None
    folder = run_dir
    if save_dir:
        folder = str(save_dir)
        if not os.path.isabs(folder):
            try:
                started_in = OmegaConf.load(os.path.join(run_dir, ".hydra", "hydra.yaml")).hydra.runtime.cwd
                folder = os.path.join(started_in, folder)
            except Exception:  # noqa: BLE001
                folder = os.path.join(run_dir, folder)
    path = os.path.join(folder, weights_filename(str(stem), model))
    return path if os.path.isfile(path) else None


def run_weights(run_dir: str, cfg) -> str | None:
    """The weights of a run directory (module docstring); exits with one line when the run
    recorded weights that are gone."""
    from minimind.runfolder import recorded_weights

    recorded = recorded_weights(run_dir)
    if recorded:
        existing = [p for p in recorded if os.path.isfile(p)]
        if not existing:
            raise SystemExit(f"error: {run_dir} recorded its weights at {recorded[0]}, which does not exist "
                             "(moved or deleted?); give the file with --weights")
        pth = [p for p in existing if p.endswith(".pth")]
        return (pth or existing)[0]
    return _configured_weights(run_dir, cfg) or _newest_weights(run_dir)


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
        weights = run_weights(model, cfg)
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


def _stop_note(n_new: int, hit_eos: bool, args, at_context_limit: bool) -> str:
    if hit_eos:
        return f"[end of text after {n_new} tokens]"
    if at_context_limit:
        return f"[stopped at the model's max_position_embeddings after {n_new} tokens]"
    return f"[stopped at --max-new-tokens={args.max_new_tokens}: the reply may be cut; raise it to see more]"


def _template_kwargs(args) -> dict:
    """MiniMind-3's template reads ``open_thinking``; Qwen-style templates read ``enable_thinking``."""
    return {} if args.think is None else {"open_thinking": args.think, "enable_thinking": args.think}


def _prompt_ids(tokenizer, args, messages, text):
    if args.chat:
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, **_template_kwargs(args))
        return tokenizer.encode(rendered)
    # pretraining samples start with bos (MiniMind's pretrain data); continue from the same state
    bos = getattr(tokenizer, "bos_token_id", None)
    return ([bos] if bos is not None else []) + tokenizer.encode(text)


def _reply(model, tokenizer, args, ids, device, out=None) -> str:
    """Decode one reply (streamed to ``out``), note on stderr why it stopped; the reply's text."""
    import torch

    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    streamer = TextStreamer(tokenizer, out=out)
    output = model.generate(input_ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                            do_sample=not args.greedy, eos_token_id=tokenizer.eos_token_id, streamer=streamer)
    new = output[0, len(ids):].tolist()
    eos = tokenizer.eos_token_id
    hit_eos = eos is not None and eos in new
    at_limit = output.shape[1] >= model.config.max_position_embeddings
    print(_stop_note(new.index(eos) + 1 if hit_eos else len(new), hit_eos, args, at_limit), file=sys.stderr)
    return tokenizer.decode(new[:new.index(eos)] if hit_eos else new, skip_special_tokens=True)


def chat(model, tokenizer, args, device, stdin=None) -> None:
    """Multi-turn chat, as upstream's eval_llm.py: each line is a user turn, the conversation so
    far (``--history`` messages of it) is the prompt. An empty line or end of input ends it;
    ``/clear`` starts over."""
    stdin = stdin if stdin is not None else sys.stdin
    interactive = stdin.isatty()
    if interactive:
        print("chat: an empty line or Ctrl-D ends it, /clear forgets the conversation", file=sys.stderr)
    conversation: list = []
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = stdin.readline()
        if not line or not line.strip():
            break
        text = line.strip()
        if text == "/clear":
            conversation = []
            continue
        if args.history is not None:
            conversation = conversation[-args.history:] if args.history else []
        conversation.append({"role": "user", "content": text})
        reply = _reply(model, tokenizer, args, _prompt_ids(tokenizer, args, conversation, text), device)
        conversation.append({"role": "assistant", "content": reply})


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from minimind.model import MiniMindConfig, MiniMindForCausalLM, model_summary
    from minimind.weights import WeightsError, load_weights

    fields, recorded, run_tokenizer = resolve_model_source(args.model)
    tokenizer = _load_tokenizer(args.tokenizer if args.tokenizer is not None else run_tokenizer)
    if fields.get("vocab_size") is None:
        fields["vocab_size"] = tokenizer.vocab_size
    try:
        model = MiniMindForCausalLM(MiniMindConfig(**fields))
    except (TypeError, ValueError) as err:
        raise SystemExit(f"error: model config from {args.model}: {err}") from None

    from minimind.adapters import is_lora_file, load_lora

    weights, lora = args.weights or (None if args.random_init else recorded), args.lora
    if weights is None and not args.random_init:
        what = ("recorded no weights and holds no .pth" if os.path.isdir(args.model)
                else "is a model config, not weights")
        raise SystemExit(f"error: {args.model} {what}: give --weights FILE (or --random-init for a "
                         "randomly initialised model)")
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
        print(f"{model_summary(model)}; --random-init: a randomly initialised model", file=sys.stderr)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    if args.seed is not None:
        torch.manual_seed(args.seed)

    if args.prompt is None:
        chat(model, tokenizer, args, device)
    else:
        _reply(model, tokenizer, args, _prompt_ids(tokenizer, args, [{"role": "user", "content": args.prompt}],
                                                    args.prompt), device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
