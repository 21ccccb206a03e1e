"""Errors every `lcrypt` command shares, so that a plugin command (``evaluate``, ``verify``) can raise
them without importing the CLI that loads it."""


class UserError(Exception):
    """A problem the user can fix; the CLI prints it as one line, without a traceback, and exits 2."""
