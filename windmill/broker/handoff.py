"""Handing deliveries to a fixed set of handler threads through one queue.

A ThreadPoolExecutor would do the same, but each `submit` builds a Future and a work item, checks whether to start
a thread, and each finished item completes its Future under a lock; the consumer never reads the Futures, and with
a handler that takes little time that bookkeeping was a tenth of a service worker's CPU.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class HandlerThreads(Generic[T]):
    """`threads` threads, started at once, that each take the next item put and run `work(item)` on it; a thread
    that finds no item waiting when it is done calls `idle(item)` (with the item it just did) before it waits."""

    def __init__(self, threads: int, work: Callable[[T], object], name: str,
                 idle: Callable[[T], object] | None = None) -> None:
        self._work = work
        self._idle = idle
        self._items: queue.SimpleQueue[T | None] = queue.SimpleQueue()
        self._closed = False
        # Not daemons, as a ThreadPoolExecutor's are not: the interpreter waits at exit for a handler that runs.
        self._threads = [threading.Thread(target=self._serve, name=f"{name}_{n}") for n in range(max(1, threads))]
        for thread in self._threads:
            thread.start()

    def put(self, item: T) -> None:
        """Run `work(item)` on the next free thread (in the order put); ignored once shut down."""
        if not self._closed:
            self._items.put(item)

    def shutdown(self) -> None:
        """Let each thread finish the item it runs, and drop the items not started."""
        self._closed = True
        for _thread in self._threads:
            self._items.put(None)

    def _serve(self) -> None:
        item = self._items.get()
        while item is not None and not self._closed:
            try:
                self._work(item)
            except Exception:
                # `work` settles its item whatever the handler did; an error here is a bug of ours, and the thread
                # stays for the next item (the item's message is redelivered once its connection closes).
                log.exception("a handler thread's work failed", extra={"action": "handler_thread_error"})
            try:
                following = self._items.get_nowait()
            except queue.Empty:
                self._call_idle(item)
                following = self._items.get()
            item = following

    def _call_idle(self, item: T) -> None:
        if self._idle is None:
            return
        try:
            self._idle(item)
        except Exception:
            log.exception("a handler thread's idle call failed", extra={"action": "handler_thread_error"})
