"""User-facing errors.

A :class:`GraphscaleError` is the user's mistake or the data's (bad config, bad input, a diverging run);
the CLI prints its message without a traceback and exits with status 2.
"""


class GraphscaleError(Exception):
    """Base class for errors caused by user input; the CLI prints the message alone."""


class ConfigError(GraphscaleError, ValueError):
    """A config key, value or type is wrong."""


class DataError(GraphscaleError, ValueError):
    """A data set is missing, incomplete or malformed."""


class TrainingError(GraphscaleError, RuntimeError):
    """Training cannot go on (NaN loss, diverged solver, ...)."""
