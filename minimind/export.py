r"""Export trained weights as a Hugging Face folder: ``python -m minimind.export``.

    python -m minimind.export outputs/2025-01-01_12-00-00 --out hf/minimind-demo
    python -m minimind.export full_sft_512.pth --model conf/model/minimind2_26m.yaml \
        --tokenizer /path/to/minimind_tokenizer --out hf/minimind2-small --dtype bf16
    python -m minimind.export upstream/MiniMind2 --out hf/minimind2-llama   # re-export upstream's layout

SOURCE is a run directory (model config from its .hydra/config.yaml, its final weights, its
tokenizer), a weights file (.pth/.pt/.bin/.safetensors; give --model), or a Hugging Face folder
(upstream's MiniMindForCausalLM layout, or one of ours). The folder holds config.json,
model.safetensors (the tied embedding stored once), generation_config.json, the tokenizer files
with the chat template, and README.md (a model card with the run's training record). The class
is the standard transformers one that computes the same function (minimind/hf/spec.py says which
and why); only when none does, the folder is upstream's MiniMind layout with its modeling code,
and the command says so. A LoRA run is merged into its base weights first.

The folder is written beside --out under a temporary name and renamed into place, so a failed
export leaves nothing half-written; an existing non-empty --out is refused unless --force.
Bad input ends in one line (``Error: ...``, exit 2) before any tensor is read where possible.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minimind.errors import UserError

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
WEIGHT_EXTS = (".pth", ".pt", ".bin", ".safetensors")
# what python -m minimind.generate samples with by default; vLLM applies generation_config.json too
SAMPLING = {"do_sample": True, "temperature": 0.85, "top_p": 0.85}


class ExportError(UserError, ValueError):
    """Bad input to the export: named thing, value, what is valid."""


@dataclass
class Source:
    fields: dict                  # MiniMind model fields (model_config.MiniMindConfig)
    state: dict                   # our key names
    weights: str                  # what was read
    tokenizer: str | None         # tokenizer directory (None: the embedded demo's)
    record: Any = None            # card.RunRecord of a run directory
    merged_lora: str | None = None


# --------------------------------------------------------------------------- reading the source


def _model_fields_from_yaml(path: str) -> dict:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    import minimind.config  # noqa: F401  (registers the ${mm.*} resolvers a saved config may use)

    if not os.path.isfile(path):
        raise ExportError(f"--model {path}: no such file; expected a model YAML (conf/model/X.yaml)")
    try:
        node = OmegaConf.load(path)
        if "model" in node and "_target_" not in node:  # a whole composed config
            node = node.model
        fields = OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as e:
        raise ExportError(f"cannot read the model config {path}: {e}") from None
    return {k: v for k, v in fields.items() if k not in ("_target_", "from_weight")}


def _run_config(run_dir: Path) -> dict:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    import minimind.config  # noqa: F401

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    out = {}
    for key in ("model", "data", "loop", "adapter"):
        try:
            out[key] = OmegaConf.to_container(cfg[key], resolve=True) if key in cfg else {}
        except OmegaConfBaseException:  # an interpolation only the training job could resolve
            out[key] = OmegaConf.to_container(cfg[key], resolve=False)
    return out


def _run_weights(run_dir: Path, cfg: dict, fields: dict) -> Path:
    """The run's final inference weights, else its newest weights or checkpoint."""
    from minimind.files import list_checkpoints
    from minimind.runfolder import recorded_weights

    recorded = [Path(p) for p in recorded_weights(run_dir) if Path(p).is_file()]
    if recorded:
        return ([p for p in recorded if p.suffix == ".pth"] or recorded)[0]
    loop = cfg.get("loop") or {}
    save_dir = Path(loop["save_dir"]) if loop.get("save_dir") else run_dir
    name = loop.get("save_weight") or "<stage>"  # null: the stage's name, which the run records
    stem = f"{name}_{fields['hidden_size']}{'_moe' if fields.get('use_moe') else ''}"
    finals = [p for p in (save_dir / f"{stem}.pth", save_dir / f"{stem}.safetensors") if p.is_file()]
    if finals:
        return max(finals, key=os.path.getmtime)
    found = [p for ext in (".pth", ".safetensors") for p in run_dir.rglob(f"*{ext}")
             if not p.name.endswith("_resume.pth")]
    if found:
        return max(found, key=os.path.getmtime)
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    if checkpoints:
        return checkpoints[0]
    raise ExportError(f"run directory {run_dir} has no weights: expected {save_dir / (stem + '.pth')} (written at the "
                      "end of the run and every loop.save_interval steps) or a checkpoint in checkpoints/; "
                      "train longer, or give the weights file as SOURCE with --model")


def _read_state(path: str | Path) -> dict:
    from minimind.weights import read_state_dict

    return read_state_dict(str(path))  # a .pth/.safetensors file, a checkpoint's model, or a folder


def resolve_source(source: str, model: str | None, tokenizer: str | None, weights: str | None,
                   base: str | None) -> Source:
    """Everything the folder is made from; refuses a bad SOURCE in one line."""
    from minimind.hf import card, lora

    path = Path(source)
    record, tok = None, tokenizer
    if path.is_dir() and (path / ".hydra" / "config.yaml").is_file():
        cfg = _run_config(path)
        fields = _model_fields_from_yaml(model) if model else {
            k: v for k, v in cfg["model"].items() if k not in ("_target_", "from_weight")}
        data_tok = (cfg.get("data") or {}).get("tokenizer")
        tok = tokenizer if tokenizer is not None else (data_tok if isinstance(data_tok, str) else None)
        wpath = Path(weights) if weights else _run_weights(path, cfg, fields)
        record = card.read_run(path)
        base = base or (cfg.get("model") or {}).get("from_weight")
    elif path.is_dir() and (path / "config.json").is_file():
        from minimind.hf.tensors import read_folder

        _, fields, state = read_folder(str(path))
        if model:
            fields = _model_fields_from_yaml(model)
        if tok is None and (path / "tokenizer.json").is_file():
            tok = str(path)
        return Source(fields, state, str(path), tok)
    elif path.is_dir():
        raise ExportError(f"SOURCE {source} is a directory with neither .hydra/config.yaml (a run directory) nor "
                          "config.json (a Hugging Face folder)")
    elif path.is_file():
        if not path.name.endswith(WEIGHT_EXTS):
            raise ExportError(f"SOURCE {source}: unknown format {path.suffix or path.name!r}; expected a run "
                              f"directory, a weights file ({', '.join(WEIGHT_EXTS)}) or a Hugging Face folder")
        if not model:
            raise ExportError(f"SOURCE {source} is a weights file: give --model conf/model/X.yaml (the model config "
                              "it was trained with), or export the run directory instead")
        fields, wpath = _model_fields_from_yaml(model), path
    else:
        raise ExportError(f"SOURCE {source} does not exist; expected a run directory, a weights file or a "
                          "Hugging Face folder")
    if not wpath.is_file():
        raise ExportError(f"--weights {wpath}: no such file")
    state = _read_state(wpath)
    base_state, adapter = lora.split_lora(state)
    merged = None
    if adapter:  # a LoRA run: full weights = base + B @ A
        if not base_state:
            if not base:
                raise ExportError(f"{wpath} holds only LoRA matrices and the run names no base weights "
                                  "(model.from_weight): give --base FILE")
            if not os.path.exists(base):
                raise ExportError(f"the LoRA run's base weights {base} do not exist (model.from_weight); "
                                  "give --base FILE")
            base_state = _read_state(base)
            merged = f"{wpath} (LoRA) + {base} (base)"
        else:
            merged = f"{wpath} (LoRA and base in one file)"
        state = lora.merge(base_state, adapter, name=str(wpath))
    return Source(fields, state, str(wpath), tok, record, merged)


# --------------------------------------------------------------------------- writing the folder


def _tokenizer_files(tok, cfg, out: Path) -> None:
    """tokenizer.json as trained, tokenizer_config.json with the chat template our generate uses
    (also as chat_template.jinja, transformers 5's file), special_tokens_map.json."""
    src = Path(tok.path) if tok.path else None
    src_file = (src / "tokenizer.json") if src and src.is_dir() else src
    if src_file and src_file.is_file():
        shutil.copyfile(src_file, out / "tokenizer.json")
    else:
        (out / "tokenizer.json").write_text(tok.backend.to_str())
    config = {k: v for k, v in tok.config.items() if k != "chat_template"}
    config.update(bos_token=tok.bos_token, eos_token=tok.eos_token, pad_token=tok.pad_token,
                  tokenizer_class="PreTrainedTokenizerFast", chat_template=tok.chat_template,
                  model_max_length=cfg.max_position_embeddings)
    config.setdefault("unk_token", tok.pad_token)
    config.setdefault("clean_up_tokenization_spaces", False)
    _json(out / "tokenizer_config.json", config)
    (out / "chat_template.jinja").write_text(tok.chat_template)
    _json(out / "special_tokens_map.json", {"bos_token": tok.bos_token, "eos_token": tok.eos_token,
                                            "pad_token": tok.pad_token, "unk_token": config["unk_token"]})


def _json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def check_tokenizer(tok, vocab_size: int) -> None:
    if tok.vocab_size > vocab_size:
        raise ExportError(f"tokenizer {tok.path} has {tok.vocab_size} tokens but the model's embedding has "
                          f"{vocab_size} rows: its ids {vocab_size}..{tok.vocab_size - 1} would index past it; "
                          "give the tokenizer the model was trained with (--tokenizer DIR)")


def write_folder(src: Source, out: str | os.PathLike, *, dtype: str | None = None, force: bool = False,
                 force_minimind: bool = False, name: str | None = None):
    """Write the folder for ``src`` at ``out``; returns the spec.Target it declares."""
    import torch
    from safetensors.torch import save_file

    from minimind.data.tokenizer import load_tokenizer
    from minimind.hf import card, spec
    from minimind.hf.remote_code import DIRECTORY as REMOTE_DIR
    from minimind.hf.remote_code import FILES as REMOTE_FILES
    from minimind.hf.tensors import EMBED, HEAD, to_hf
    from minimind.model import MiniMindConfig, MiniMindForCausalLM, num_parameters
    from minimind.weights import export_state_dict, load_weights

    out = Path(out)
    refuse_out(out, force)
    fields = dict(src.fields)
    embed = src.state.get(EMBED, src.state.get(HEAD))
    if fields.get("vocab_size") is None and embed is not None:
        fields["vocab_size"] = int(embed.shape[0])
    try:
        cfg = MiniMindConfig(**fields).validate()
    except (TypeError, ValueError) as e:
        raise ExportError(f"model config: {e}") from None
    tok = load_tokenizer(src.tokenizer)
    check_tokenizer(tok, cfg.vocab_size)
    model = MiniMindForCausalLM(cfg)
    load_weights(model, src.state)  # strict: names every key and shape that does not fit
    state = export_state_dict(model, dtype=None)
    source_dtype = (embed.dtype if embed is not None else torch.float32)
    torch_dtype = getattr(torch, DTYPES[dtype]) if dtype else source_dtype
    if torch_dtype not in (torch.float32, torch.bfloat16, torch.float16):
        torch_dtype = torch.float32
    state = {k: v.to(torch_dtype) if v.is_floating_point() else v for k, v in state.items()}
    target = spec.choose(cfg, force_minimind=force_minimind)
    dtype_name = str(torch_dtype).replace("torch.", "")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _json(tmp / "config.json", spec.hf_config(cfg, target, bos=tok.bos_token_id, eos=tok.eos_token_id,
                                                  pad=tok.pad_token_id, dtype=dtype_name))
        save_file(to_hf(state, cfg, target.architecture), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _json(tmp / "generation_config.json", {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                                               "pad_token_id": tok.pad_token_id, **SAMPLING})
        _tokenizer_files(tok, cfg, tmp)
        if not target.standard:
            for f in REMOTE_FILES:
                shutil.copyfile(os.path.join(REMOTE_DIR, f), tmp / f)
        files = sorted(p.name for p in tmp.iterdir()) + ["README.md"]
        text = card.render(name=name or out.name, target=target, fields=cfg.to_dict(), dtype=dtype_name,
                           weights=src.weights, tokenizer=tok.path or "demo", record=src.record,
                           merged_lora=src.merged_lora, n_params=num_parameters(model), files=files)
        (tmp / "README.md").write_text(text, encoding="utf-8")
        _publish_modes(tmp)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def refuse_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; expected a directory to create")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"--out {out} exists and is not empty; choose another folder or add --force to "
                          "replace it")


def _publish_modes(folder: Path) -> None:
    """mkdtemp makes the folder private (0700): give it and its files the modes of a plain mkdir."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~umask)


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an old --out (with --force) goes only after that."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- the command


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every other bad input here
        self.exit(2, f"Error: {message} (see python -m minimind.export --help)\n")


def parse_args(argv=None) -> argparse.Namespace:
    p = _Parser(prog="python -m minimind.export", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("source", metavar="SOURCE", help="run directory, weights file, or Hugging Face folder")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to create")
    p.add_argument("--model", default=None, metavar="YAML",
                   help="model config (conf/model/X.yaml); default: the run's or the folder's")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="tokenizer directory; default: the run's data.tokenizer, else the embedded demo's")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="with a run directory: this weights file instead of its final weights")
    p.add_argument("--base", default=None, metavar="FILE",
                   help="with a LoRA run: the base weights (default: the run's model.from_weight)")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                   help="dtype of model.safetensors (default: the weights' own, fp16 for saved weights)")
    p.add_argument("--arch", default="auto", choices=("auto", "minimind"),
                   help="auto: the standard class that computes the same function (else MiniMind's layout); "
                        "minimind: upstream's MiniMindForCausalLM layout with its modeling code")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    return p.parse_args(argv)


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as e:  # --help, or a bad argument (already printed as one line)
        return int(e.code or 0)
    try:
        refuse_out(Path(args.out), args.force)  # before reading any tensor
        src = resolve_source(args.source, args.model, args.tokenizer, args.weights, args.base)
        target = write_folder(src, args.out, dtype=args.dtype, force=args.force,
                              force_minimind=args.arch == "minimind")
    except UserError as e:
        print(f"Error: {str(e).strip()}", file=sys.stderr)
        return 2
    note = "" if target.standard else " (MiniMind layout with its modeling code: load with trust_remote_code=True)"
    print(f"wrote {args.out}: {target.architecture}{note}; {target.reason}")
    if src.merged_lora:
        print(f"LoRA merged: {src.merged_lora}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
