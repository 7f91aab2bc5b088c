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
