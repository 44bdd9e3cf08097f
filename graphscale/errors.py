"""User-facing errors.

A :class:`GraphscaleError` is the user's mistake or the data's (bad config, bad input, a diverging run);
the CLI prints its message without a traceback and exits with status 2.
"""
from __future__ import annotations


class GraphscaleError(Exception):
    """Base class for errors caused by user input; the CLI prints the message alone."""


class ConfigError(GraphscaleError, ValueError):
    """A config key, value or type is wrong. ``key`` (dotted, e.g. ``train.lr``) names the config key
    at fault when there is one, so the loader can say where it was set (file and line, or the
    command line)."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class DataError(GraphscaleError, ValueError):
    """A data set is missing, incomplete or malformed."""


class TrainingError(GraphscaleError, RuntimeError):
    """Training cannot go on (NaN loss, diverged solver, ...)."""
