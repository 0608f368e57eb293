"""Errors a user can cause. Each carries a one-paragraph message that names the thing at fault.

The CLI turns :class:`UsageError` into exit code 2 and :class:`BenchmarkError` into exit code 1, printing the
message without a traceback.
"""

from __future__ import annotations


class BenchmarkError(Exception):
    """An error with a message meant for the user (a bad file, a failed trial, a corrupt cache)."""


class UsageError(BenchmarkError):
    """The command line or the arguments of a public function asked for something that does not exist."""


class UnknownNameError(UsageError, KeyError):
    """A plugin name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PluginHostError(UsageError):
    """A plug-in was composed with a method that cannot host it (no segmenter, no features)."""


class DataError(BenchmarkError):
    """A dataset file is missing, unreadable or inconsistent."""


class TrialDiverged(BenchmarkError):
    """A training loss became NaN or infinite."""
