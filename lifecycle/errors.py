"""User-facing errors: the CLI prints their message without a traceback and exits with status 2."""


class LifecycleError(Exception):
    """Something the user can fix: bad config, bad input file, failed data validation."""


class ConfigError(LifecycleError):
    """The configuration is invalid; raised before any work starts."""


class InputError(LifecycleError):
    """An input file or source cannot be used; the message names it (and the line, when there is one)."""


class ValidationFailed(LifecycleError):
    """The data did not meet the expectations in conf/validate.yaml."""


class StorageError(LifecycleError):
    """A disk is full or a path cannot be written (permission, read-only); the message names the path."""
