"""Hugging Face folders, out and in: ``python -m minimind.export`` and ``model.from_weight=DIR``.

    spec.py         which transformers class computes the same function as a MiniMind config,
                    its config.json both ways, and what differs from a chosen ``model=`` (no torch)
    tensors.py      state dicts between our key names and each class's, the folder's weight files
    card.py         the README.md model card, from the run directory's records (no torch)
    lora.py         the seam to the LoRA merge (a LoRA run is exported merged)
    remote_code/    MiniMindForCausalLM for transformers (trust_remote_code), copied into a folder
                    only when no standard class computes the same function

The command itself is :mod:`minimind.export`; :func:`minimind.weights.load_weights` reads a folder.
"""
