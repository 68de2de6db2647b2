"""The core's error for settings: raised by the config loader and the address parser."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A setting has a value we cannot use. The message is one line naming the variable."""
