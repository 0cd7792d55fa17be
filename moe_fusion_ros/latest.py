"""Hand-over buffers between the executor thread (producer) and the inference worker (consumer), ROS-free.

:class:`LatestSlot` keeps only the newest item: a ``put`` over an unread item overwrites it and counts a drop, so
a slow model never builds up lag (ros2_conventions §2.7). :class:`FifoBuffer` keeps every item (offline
``processing.mode: all``). Both: ``put`` never blocks, ``get`` blocks up to ``timeout``, ``close`` wakes readers.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from typing import Any


class BufferClosed(Exception):
    """Raised by ``get`` once the buffer is closed and empty, and by ``put`` after ``close``."""


class _Buffer(ABC):
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._closed = False
        self.puts = 0
        self.gets = 0
        self.dropped = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Refuse further puts and wake every waiting ``get``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @abstractmethod
    def _empty(self) -> bool:
        """Whether no item is waiting (called with the lock held)."""

    @abstractmethod
    def _pop(self) -> Any:
        """Remove and return the waiting item (called with the lock held, buffer not empty)."""

    def get(self, timeout: float | None = None) -> Any | None:
        """The next item; ``None`` on timeout; :class:`BufferClosed` when closed and drained."""
        with self._cond:
            if not self._cond.wait_for(lambda: not self._empty() or self._closed, timeout):
                return None
            if self._empty():
                raise BufferClosed("buffer closed")
            self.gets += 1
            return self._pop()


class LatestSlot(_Buffer):
    """One-slot buffer: ``put`` overwrites an unread item (returns ``True`` and counts it in ``dropped``)."""

    _EMPTY = object()

    def __init__(self) -> None:
        super().__init__()
        self._item: Any = self._EMPTY

    def _empty(self) -> bool:
        return self._item is self._EMPTY

    def _pop(self) -> Any:
        item, self._item = self._item, self._EMPTY
        return item

    def put(self, item: Any) -> bool:
        with self._cond:
            if self._closed:
                raise BufferClosed("put on a closed buffer")
            overwrote = not self._empty()
            if overwrote:
                self.dropped += 1
            self._item = item
            self.puts += 1
            self._cond.notify()
            return overwrote

    def __len__(self) -> int:
        with self._cond:
            return 0 if self._empty() else 1


class FifoBuffer(_Buffer):
    """Unbounded (or ``maxsize``-bounded, dropping the oldest) first-in first-out buffer."""

    def __init__(self, maxsize: int | None = None) -> None:
        super().__init__()
        if maxsize is not None and maxsize < 1:
            raise ValueError(f"maxsize must be >= 1 or None, got {maxsize}")
        self._items: deque[Any] = deque()
        self.maxsize = maxsize

    def _empty(self) -> bool:
        return not self._items

    def _pop(self) -> Any:
        return self._items.popleft()

    def put(self, item: Any) -> bool:
        with self._cond:
            if self._closed:
                raise BufferClosed("put on a closed buffer")
            dropped = self.maxsize is not None and len(self._items) >= self.maxsize
            if dropped:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self.puts += 1
            self._cond.notify()
            return dropped

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


def make_buffer(mode: str) -> LatestSlot | FifoBuffer:
    """``latest`` → :class:`LatestSlot` (real time), ``all`` → :class:`FifoBuffer` (offline evaluation)."""
    if mode == "latest":
        return LatestSlot()
    if mode == "all":
        return FifoBuffer()
    raise ValueError(f"processing mode must be 'latest' or 'all', got {mode!r}")
