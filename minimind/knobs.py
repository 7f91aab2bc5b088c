"""The two building blocks of the config schema: documented fields and choice enums (no torch).

Every setting is documented once, in the schema: ``knob(default, "what it does")`` puts the
text in the dataclass field's metadata, where ``launch.py --help`` reads it. A setting with a
fixed set of values is a :class:`Choice`: OmegaConf refuses anything else while composing,
listing the valid values, and a member compares equal to its string (``OnNan.stop == "stop"``),
so code that receives the value from ``instantiate`` can treat it as the plain string.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Dict


class Choice(str, enum.Enum):
    """A str enum whose ``str()`` and f-string form is the bare value (``stop``, not
    ``OnNan.stop``), so messages, file names and JSON read as the YAML does."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def values(cls) -> str:
        return ", ".join(m.value for m in cls)


def knob(default: Any, help: str) -> Any:
    """A dataclass field with its one-line documentation (mutable defaults are copied)."""
    meta = {"help": help}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def helps(cls: type) -> Dict[str, str]:
    """Field name -> its documentation, for a schema dataclass."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
