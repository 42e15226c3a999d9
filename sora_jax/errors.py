"""The error every command turns into one line: a config (or an input it names) that cannot run.

A leaf module, so that every layer can raise it without importing the config schema.
"""


class ConfigError(ValueError):
    """A config that cannot run; the message names the offending key."""
