"""Prepared images shared by the services of one process: each image is read and validated once, not once
per service, and concurrent requests for the same image wait for the one load in progress."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

Key = TypeVar("Key")
Value = TypeVar("Value")


class SingleFlightCache(Generic[Key, Value]):
    """A bounded LRU of loaded values (or of the exception their load raised: a bad image stays bad)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("the cache needs room for at least one entry")
        self.capacity = capacity
        self._entries: OrderedDict[Key, Future[Value]] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0
        self.hits = 0

    def get(self, key: Key, load: Callable[[], Value]) -> Value:
        with self._lock:
            future = self._entries.get(key)
            if future is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                owner = False
            else:
                future = Future()
                self._entries[key] = future
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
                self.loads += 1
                owner = True
        if owner:
            try:
                future.set_result(load())
            except Exception as error:
                future.set_exception(error)
        return future.result()

    def __len__(self) -> int:
        return len(self._entries)
