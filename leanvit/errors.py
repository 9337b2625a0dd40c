"""The base of the errors leanvit raises for a problem a person can fix: bad input, a missing file or package,
an unsupported setting on this machine, a result that failed its check.

``leanvit`` (the command line) prints a :class:`LeanViTError` as one line without a traceback; anything else
(a shape error inside torch, a bug) keeps its traceback. Each class also derives from the built-in exception
it replaces, so ``except ValueError`` and ``pytest.raises(ValueError)`` keep working.
"""
from __future__ import annotations

__all__ = ["LeanViTError", "InvalidValueError", "MissingFileError", "UnknownNameError", "OperationError"]


class LeanViTError(Exception):
    """Base class: an error whose message says what went wrong and how to fix it."""


class InvalidValueError(LeanViTError, ValueError):
    """An argument, option or input value leanvit cannot use."""


class MissingFileError(LeanViTError, FileNotFoundError):
    """A file or folder leanvit was pointed at does not exist or lacks what it needs."""


class UnknownNameError(LeanViTError, KeyError):
    """An unknown model, family or registry name (the message lists the known ones or close matches)."""

    def __str__(self) -> str:  # KeyError quotes its message; this one is a sentence
        return str(self.args[0]) if self.args else ""


class OperationError(LeanViTError, RuntimeError):
    """An operation cannot go on because of its input or this machine (e.g. no CUDA, unreadable data)."""
