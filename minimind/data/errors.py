"""The one error type of the data layer.

``DataError`` is a ``ValueError`` (what the brief and callers catch) and a
:class:`minimind.errors.UserError`, so ``launch.py`` prints it as one line: which file, which
line, what was expected there.
"""

from __future__ import annotations

from minimind.errors import UserError


class DataError(UserError, ValueError):
    """Bad data input: a missing or malformed file, a bad line, a missing tokenizer."""


def bad_line_message(path, line_number: int, reason: str) -> str:
    """``'<path>', line 12: <reason>``: the form every bad-line error uses."""
    return f"{path}, line {line_number}: {reason}"
