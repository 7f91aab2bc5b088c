"""MiniMindForCausalLM for transformers, written for folders that no standard class can describe.

``python -m minimind.export`` copies ``configuration_minimind.py`` and ``modeling_minimind.py``
into such a folder (config.json's ``auto_map`` names them), so that
``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` runs it anywhere with only
torch and transformers installed. The files import nothing from minimind on purpose; the math
is minimind/model.py's, restated, and tests/test_export.py proves the two give equal logits.
This package's ``__init__`` imports neither file (they need transformers).
"""

import os

FILES = ("configuration_minimind.py", "modeling_minimind.py")
DIRECTORY = os.path.dirname(os.path.abspath(__file__))
