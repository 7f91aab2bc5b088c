"""Errors caused by what the user asked for.

The entry point prints these as one line (what, the value, what would be valid) and exits
non-zero, without a Python traceback; ``HYDRA_FULL_ERROR=1`` shows the traceback too.
"""


class UserError(Exception):
    """Bad input: a config value, a missing file, an incompatible checkpoint."""


class ConfigError(UserError, ValueError):
    """A config value outside what is valid."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used (missing, corrupt, another model shape)."""


class TrainingError(UserError):
    """Training cannot go on (NaN loss, too many skipped steps); saved work is kept."""


def unwrap_worker_error(error: BaseException) -> BaseException:
    """The error as the user would have seen it in the main process.

    A DataLoader worker's exception is re-raised by torch as the same type, but with the
    message ``Caught DataError in DataLoader worker process 0.\\nOriginal Traceback ...``:
    the worker's whole traceback, whose last line is ``<module>.<type>: <the message>``. This
    returns a new exception of that type with only that message (``error`` itself otherwise)."""
    text = str(error)
    if not (text.startswith("Caught ") and "\nOriginal Traceback" in text):
        return error
    cls = type(error)
    prefixes = (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: ")
    lines = text.rstrip("\n").splitlines()
    for k in range(len(lines) - 1, -1, -1):
        for prefix in prefixes:
            if lines[k].startswith(prefix):
                message = "\n".join([lines[k][len(prefix):]] + lines[k + 1:])
                try:
                    clean = cls(message)
                except Exception:  # noqa: BLE001 - a type that cannot be rebuilt from a message
                    return error
                clean.__cause__ = error
                return clean
    return error
