"""Errors that are the user's to fix. The CLIs print them as one line and exit 2."""


class UsageError(Exception):
    """A wrong flag, a missing or unusable input: one line that names the thing and the fix."""
