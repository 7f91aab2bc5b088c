"""The exported folder's README.md: what the model is and how it was trained (no torch).

The training record comes from the run directory: ``summary.json`` (steps, tokens, final and
best loss, the val loss when evaluation ran), ``.hydra/config.yaml`` (data, objective, adapter,
precision), ``.hydra/hydra.yaml`` (the group choices: model=, experiment=) and
``.hydra/overrides.yaml`` (the command line). A folder exported from a bare weights file says
that it has no record rather than inventing one.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minimind.hf.spec import Target

VAL_KEYS = ("val_loss", "final_val_loss", "last_val_loss", "best_val_loss", "best_val_step")


@dataclass
class RunRecord:
    run_dir: str
    summary: dict = field(default_factory=dict)
    choices: dict = field(default_factory=dict)
    overrides: list = field(default_factory=list)
    config: dict = field(default_factory=dict)

    @property
    def command(self) -> str:
        return " ".join(["python launch.py"] + [shlex.quote(str(o)) for o in self.overrides])

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def stage(self) -> str:
        """``experiment=...`` when one was chosen, else what the groups say (objective, data, adapter)."""
        parts = []
        if self.choices.get("experiment"):
            parts.append(f"experiment={self.choices['experiment']}")
        objective = self.choices.get("objective") or str(self.get("objective._target_", "?")).rsplit(".", 1)[-1]
        parts.append(f"objective={objective}")
        if self.get("data.kind"):
            parts.append(f"data.kind={self.get('data.kind')}")
        adapter = self.choices.get("adapter")
        if adapter and adapter != "none":
            parts.append(f"adapter={adapter}")
        if self.get("loop.save_weight"):
            parts.append(f"weights {self.get('loop.save_weight')}")
        return ", ".join(parts)


def read_run(run_dir: str | Path) -> RunRecord:
    """What a run directory says about its training (missing files leave fields empty)."""
    import yaml

    run_dir = Path(run_dir)

    def load_yaml(path: Path) -> Any:
        try:
            return yaml.safe_load(path.read_text()) if path.is_file() else None
        except (OSError, yaml.YAMLError):
            return None

    summary: dict = {}
    if (run_dir / "summary.json").is_file():
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
    hydra = load_yaml(run_dir / ".hydra" / "hydra.yaml") or {}
    choices = ((hydra.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    overrides = load_yaml(run_dir / ".hydra" / "overrides.yaml") or summary.get("overrides") or []
    config = _resolved_config(run_dir / ".hydra" / "config.yaml")
    return RunRecord(str(run_dir), summary if isinstance(summary, dict) else {},
                     {k: v for k, v in choices.items() if not str(k).startswith("hydra")},
                     list(overrides), config if isinstance(config, dict) else {})


def _resolved_config(path: Path) -> dict:
    """The run's config with ${mm.asset:...} and friends resolved where they can be outside the job."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    import minimind.config  # noqa: F401  (registers the ${mm.*} resolvers)

    if not path.is_file():
        return {}
    try:
        cfg = OmegaConf.load(path)
    except (OSError, OmegaConfBaseException, ValueError):
        return {}
    try:
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    except OmegaConfBaseException:
        pass
    out = {}
    for key in cfg:  # group by group: one that only the job could resolve stays as written
        part = OmegaConf.masked_copy(cfg, [key])
        try:
            out[key] = OmegaConf.to_container(part, resolve=True, enum_to_str=True)[key]
        except OmegaConfBaseException:
            out[key] = OmegaConf.to_container(part, resolve=False)[key]
    return out


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def _row(name: str, value: Any) -> str:
    return f"| {name} | {str(value).replace('|', '/')} |"


def render(*, name: str, target: Target, fields: dict, dtype: str, weights: str, tokenizer: str,
           record: RunRecord | None, merged_lora: str | None, n_params: int, files: list[str]) -> str:
    """README.md text of the folder (Hub-style front matter first)."""
    remote = not target.standard
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation",
             "tags:", "- minimind", "- minimind-hydra", f"- {target.model_type}", "---", "",
             f"# {name}", "",
             f"A MiniMind model ({fields.get('family')}, {n_params / 1e6:.2f}M parameters) exported by "
             f"minimind-hydra (`python -m minimind.export`) as `{target.architecture}`.", "",
             f"Why this class: {target.reason}.", ""]
    if remote:
        lines += ["No standard transformers class computes this model's function, so the folder carries "
                  "its own modeling code (`modeling_minimind.py`, `configuration_minimind.py`); load it with "
                  "`trust_remote_code=True`. vLLM and llama.cpp do not know this architecture.", ""]
    lines += ["## Training", "", "| | |", "|---|---|"]
    if record is None:
        lines.append(_row("record", "none: exported from a weights file, not a run directory"))
    else:
        s = record.summary
        lines += [_row("run", f"`{record.run_dir}`"),
                  _row("stage", record.stage or "-"),
                  _row("data", f"`{record.get('data.path', '-')}` ({record.get('data.kind', '-')}, max_length "
                               f"{record.get('data.max_length', '-')})"),
                  _row("steps", f"{_number(s.get('optimizer_steps'))} optimizer steps, "
                                f"{_number(s.get('tokens'))} tokens, status {s.get('status', 'unknown')}"),
                  _row("final loss", _number(s.get("final_loss"))),
                  _row("best loss", _number(s.get("best_loss")))]
        vals = [f"{k} {_number(s[k])}" for k in VAL_KEYS if k in s]
        lines.append(_row("val loss", ", ".join(vals) if vals else "not evaluated"))
        lines += [_row("precision", s.get("precision", record.get("precision.name", "-"))),
                  _row("command", f"`{record.command}`")]
    if merged_lora:
        lines.append(_row("LoRA", f"merged into the base weights before export: `{merged_lora}`"))
    lines += [_row("weights", f"`{weights}`, saved here as {dtype}"), _row("tokenizer", f"`{tokenizer}`"), ""]
    trust = ", trust_remote_code=True" if remote else ""
    lines += ["## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              'path = "."  # this folder', f"tokenizer = AutoTokenizer.from_pretrained(path{trust})",
              f"model = AutoModelForCausalLM.from_pretrained(path{trust})",
              'ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}],',
              '                                    add_generation_prompt=True, return_dict=True,',
              '                                    return_tensors="pt")["input_ids"]',
              "out = model.generate(ids, max_new_tokens=64, do_sample=False)",
              "print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))", "```", ""]
    if not remote:
        lines += ["Other runtimes (see minimind-hydra's README for what was and was not run): "
                  "`vllm serve <this folder>`; llama.cpp `python convert_hf_to_gguf.py <this folder>` "
                  "(MiniMind's byte-level BPE uses GPT-2's split pattern: pre-tokenizer `gpt-2`), then "
                  "Ollama `FROM ./model.gguf`.", ""]
    lines += ["## MiniMind config", "", "```json", json.dumps(fields, indent=2, sort_keys=True), "```", "",
              "Files: " + ", ".join(f"`{f}`" for f in sorted(files)), ""]
    return "\n".join(lines)
