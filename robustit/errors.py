"""Errors a user can act on.

Every error raised for bad user input is a :class:`RobustITError` (or subclass) whose message
names the argument / file / record, what was expected, what was received, and the fix.
The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""


class RobustITError(Exception):
    """Base class for errors caused by user input or environment, not by a bug."""


class ConfigError(RobustITError, ValueError):
    """A configuration value is missing, unknown or out of range."""


class DataError(RobustITError, ValueError):
    """A data file or record is missing, malformed, unsafe or empty."""


class CheckpointError(RobustITError, ValueError):
    """A checkpoint does not exist, does not match its base model, or is corrupt."""
