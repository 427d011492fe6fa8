"""Errors a user can act on: the CLI prints their message as one sentence, without a traceback."""


class WindmillError(Exception):
    """Base of every error whose message is meant for the person at the command line."""


class ConfigError(WindmillError):
    """A setting is missing or invalid; the message names the variable."""


class CatalogError(WindmillError):
    """The service catalog is unreadable, or a selection names an unknown service."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (or its type name): what a log line or the CLI shows."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
