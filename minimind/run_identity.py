"""What defines a run, so that a resume can check it continues the same one.

Every checkpoint records :func:`describe` of its run; on resume :func:`check` compares it with
the run being started and refuses a difference, listing each field with both values, unless
``loop.resume_changes=allow`` (then the changes are logged and put in events.jsonl).

The run is (everything else may change between the attempts of one run):

- the model's fields (but not ``from_weight``, where a new run starts; ``flash_attn``, the same
  math; ``inference_rope_scaling`` and ``max_position_embeddings``, inference and table size),
- the optimizer and schedule settings (``optim.*`` except ``optimizer.fused`` / ``foreach``),
- the precision (but not the GradScaler node: its state is in the checkpoint),
- the data: kind, dataset node, max_length, shuffle, augmentation, ``add_bos_eos``; the data
  file by its content (size, a hash of its first and last 64 KiB, the number of samples and a
  checksum of the line index: a grown, shrunk or edited file, not a moved or copied one) and
  the tokenizer by its fingerprint (vocabulary, merges, specials, chat template),
- samples per optimizer step = ``data.batch_size x optim.accumulation_steps x ranks`` (the
  world size and batch may change if the product stays: the run continues at the same sample,
  not bit-exact, as the resume log says),
- ``seed``, ``loop.epochs``, ``loop.max_steps`` (the schedule spans the run's length),
- the objective and adapter nodes.

Not the run: logging and saving (``loop.log_interval``, ``save_interval``, ``keep_last``,
``save_dir``, ...), ``loop.compile``, the device and ``dist.*``, ``data.num_workers``,
``pretokenize``, ``cache_dir``, ``trim_padding`` (exact), ``on_bad_line``, held-out data
(``data.val_*``), ``name``, ``notes``, the logger.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

from minimind.errors import CheckpointError

log = logging.getLogger("minimind")

VERSION = 1
RUN_NODES = ("model", "optim", "precision", "data", "objective", "adapter")
RUN_KEYS = ("seed", "loop.epochs", "loop.max_steps")
MAY_CHANGE = (
    "model.from_weight", "model.flash_attn", "model.inference_rope_scaling", "model.max_position_embeddings",
    "optim.optimizer.fused", "optim.optimizer.foreach", "precision.scaler",
    "data.path", "data.tokenizer",                 # compared by content: DATA_FILE, TOKENIZER
    "data.batch_size", "optim.accumulation_steps",  # compared as SAMPLES_PER_STEP
    "data.num_workers", "data.pretokenize", "data.cache_dir", "data.trim_padding", "data.on_bad_line",
    "data.val_",
)
SAMPLES_PER_STEP, DATA_FILE, TOKENIZER = "samples per optimizer step", "data file", "tokenizer"


def _may_change(key: str) -> bool:
    return any(key == m or key.startswith(m + ".") or (m.endswith("_") and key.startswith(m))
               for m in MAY_CHANGE)


def _flatten(node: Any, prefix: str, out: Dict[str, Any]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif not _may_change(prefix):
        out[prefix] = list(node) if isinstance(node, tuple) else node


def _select(config: dict, key: str) -> Any:
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def describe(config: Dict[str, Any], dataset: Any, batch_size: int, accumulation_steps: int,
             world_size: int) -> Dict[str, Any]:
    """The run's identity: plain values only (it goes into checkpoints, loaded weights_only)."""
    fields: Dict[str, Any] = {}
    for node in RUN_NODES:
        if node in config:
            _flatten(config[node], node, fields)
    for key in RUN_KEYS:
        fields[key] = _select(config, key)
    fields[SAMPLES_PER_STEP] = int(batch_size) * int(accumulation_steps) * int(world_size)
    notes = {SAMPLES_PER_STEP: f"{batch_size} x {accumulation_steps} x {world_size}"}
    index = getattr(dataset, "index", None)
    if index is not None:
        sig = index.signature
        fields[DATA_FILE] = {"samples": len(dataset), "bytes": int(sig["size"]), "head_tail": sig["head_tail"],
                             "lines": getattr(index, "table_checksum", None)}
        notes[DATA_FILE] = index.path
    tokenizer = getattr(dataset, "tokenizer", None)
    if getattr(tokenizer, "fingerprint", None):
        fields[TOKENIZER] = tokenizer.fingerprint
        notes[TOKENIZER] = str(tokenizer.path)
    return {"version": VERSION, "fields": fields, "notes": notes}


def differences(saved: Dict[str, Any], now: Dict[str, Any]) -> Dict[str, list]:
    """``{field: [saved value, this run's value]}`` for every field that differs."""
    a, b = saved.get("fields", {}), now.get("fields", {})
    out = {}
    for key in list(b) + [k for k in a if k not in b]:
        if _may_change(key):  # a key the saved run recorded that is no longer the run
            continue
        if a.get(key, "(absent)") != b.get(key, "(absent)"):
            out[key] = [a.get(key, "(absent)"), b.get(key, "(absent)")]
    return out


def _describe_change(key: str, old: Any, new: Any, saved: dict, now: dict) -> str:
    notes_a, notes_b = saved.get("notes", {}), now.get("notes", {})
    if key == SAMPLES_PER_STEP:
        return (f"samples per optimizer step: {old} -> {new} (data.batch_size x optim.accumulation_steps x "
                f"ranks: {notes_a.get(key, '?')} -> {notes_b.get(key, '?')})")
    if key == DATA_FILE and isinstance(old, dict) and isinstance(new, dict):
        parts = [f"{old.get(k)} -> {new.get(k)} {k}" for k in ("samples", "bytes") if old.get(k) != new.get(k)]
        what = ", ".join(parts) or "the same size, other content"
        return f"data file {notes_a.get(key)} -> {notes_b.get(key)}: {what}"
    if key == TOKENIZER:
        return f"tokenizer {notes_a.get(key)} -> {notes_b.get(key)}: another vocabulary or chat template"
    return f"{key}: {old} -> {new}"


def check(saved: Optional[Dict[str, Any]], now: Dict[str, Any], *, allow: bool, path) -> Dict[str, list]:
    """Refuse to continue another run (CheckpointError listing the differences), unless
    ``allow``; returns the differences (logged when allowed)."""
    if not saved:
        log.info("checkpoint %s does not record what defines its run (an older checkpoint, or "
                 "upstream's): what it continues is not checked", path)
        return {}
    changes = differences(saved, now)
    if not changes:
        return {}
    items = "; ".join(_describe_change(k, v[0], v[1], saved, now) for k, v in changes.items())
    if not allow:
        raise CheckpointError(
            f"checkpoint {path} is of another run: {items}. A resume continues the run it saved: "
            f"use the same settings, start a new run in another hydra.run.dir, or add "
            f"loop.resume_changes=allow to continue it with these changes")
    log.warning("checkpoint %s: continuing with changes (loop.resume_changes=allow): %s", path, items)
    return changes
