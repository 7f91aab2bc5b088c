"""Files shipped inside the package (``minimind/data/assets``), found without importing torch.

The config layer resolves ``${mm.asset:demo/sft.jsonl}`` at composition time through
:func:`asset_path`, so this module must stay import-light (stdlib only).
"""

from __future__ import annotations

import os

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")


def asset_path(name: str) -> str:
    """Absolute path of the packaged asset ``name`` (e.g. ``"demo/sft.jsonl"``).

    Raises DataError naming the asset and what is shipped when it does not exist.
    """
    from minimind.data.errors import DataError

    rel = os.path.normpath(str(name).strip().lstrip("/\\"))
    if rel.startswith(".."):
        raise DataError(f"asset name {name!r} points outside {ASSETS_DIR}")
    path = os.path.join(ASSETS_DIR, rel)
    if not os.path.exists(path):
        shipped = sorted(_list_assets())
        raise DataError(
            f"no packaged asset {name!r} (looked for {path}); shipped assets: "
            + (", ".join(shipped) if shipped else "none")
        )
    return path


def _list_assets():
    for root, _dirs, files in os.walk(ASSETS_DIR):
        for f in files:
            if f.endswith((".idx", ".lock")) or f.startswith("."):
                continue
            yield os.path.relpath(os.path.join(root, f), ASSETS_DIR).replace(os.sep, "/")
