"""Errors a user can act on. The CLI prints them as one line (no traceback unless
``--debug``) and exits with the code the class names: 2 for bad usage (a wrong argument,
a missing input the user must make first), 1 for a failure while running."""

from __future__ import annotations


class AikdError(Exception):
    """A failure the user can understand from its message alone; exit code 1."""

    exit_code = 1


class UsageError(AikdError):
    """Bad usage: a missing or wrong input named by the message, with the fix; exit code 2."""

    exit_code = 2
