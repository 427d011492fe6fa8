"""Errors a user can act on: the CLI prints their message as one sentence, without a traceback."""

from windmill import DISTRIBUTION


class WindmillError(Exception):
    """Base of every error whose message is meant for the person at the command line."""


class ConfigError(WindmillError):
    """A setting is missing or invalid; the message names the variable."""


class CatalogError(WindmillError):
    """The service catalog is unreadable, or a selection names an unknown service."""


class AttemptGivenBack(WindmillError):
    """Work cut short before its outcome was known, through no fault of its input: the queue does not count it as an
    attempt and the task goes back to its queue (a worker stopping while its call waited for a service that is
    down: windmill/farm/outages.py)."""


class PoisonInput(WindmillError):
    """A task whose handling killed its worker process each time it ran (a decoder's crash, more memory than the worker
    has): the queue records its failure instead of running it again (DESIGN rule 4; windmill/broker/poison.py via
    RabbitMQ, sql/0131 and windmill/worker/runtime.py in the job table).
    `deaths`: the deaths counted; `how`: how they were seen."""

    def __init__(self, deaths: int, how: str) -> None:
        times = {1: "once", 2: "twice"}.get(deaths, f"{deaths} times")
        super().__init__(f"the worker died handling it {times} ({how}): a poison input, not run again")
        self.deaths = deaths


class NoSuchImage(WindmillError):
    """An image id that names no image; every command that takes one (`show`, `status --image`) says it alike."""

    def __init__(self, image_id: int) -> None:
        super().__init__(f"no image with id {image_id}")
        self.image_id = image_id


class MissingExtra(WindmillError):
    """An optional part of Windmill needs a package that is not installed; the message names the extra to install."""

    def __init__(self, what: str, package: str, extra: str) -> None:
        super().__init__(f"{what} needs the {package} package: pip install '{DISTRIBUTION}[{extra}]'")


def first_line(error: BaseException) -> str:
    """The first line of an error's message (or its type name): what a log line or the CLI shows."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
