"""The project's user-facing error types (lowest floor: imports nothing from gat)."""
from __future__ import annotations


class UserError(Exception):
    """Something the user asked for cannot be done as asked; the message says what and why.

    Every CLI prints it as one `error:` line and exits 2 (contract.cli.run)."""


class ConfigError(UserError, ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""
