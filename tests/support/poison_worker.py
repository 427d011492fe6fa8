"""A real worker process (`windmill worker …`) that dies by SIGKILL, with no shutdown of any kind, when it is about to
read an image whose path holds POISON: what a decoder's segfault or the OOM killer does to a worker, for tests of a
poison input. Every role that reads an image goes through the process's ImageSource (a service task's inputs, a
box's crop, a caption's image), so each of them dies on it.

    python -m tests.support.poison_worker --role service --service yolov8 --broker rabbitmq
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from windmill.image_cache import ImageSource

POISON = "poison"


def _dies_on_poison(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def reading(self: ImageSource, *args: Any, **kwargs: Any) -> Any:
        if any(isinstance(value, str) and POISON in value for value in (*args, *kwargs.values())):
            os.kill(os.getpid(), signal.SIGKILL)
        return method(self, *args, **kwargs)

    return reading


ImageSource.inputs_for = _dies_on_poison(ImageSource.inputs_for)  # type: ignore[method-assign]
ImageSource.crop = _dies_on_poison(ImageSource.crop)  # type: ignore[method-assign]


if __name__ == "__main__":
    from windmill.commands import main

    sys.exit(main(["worker", *sys.argv[1:]]))
