"""The thread boundary: engine callbacks in, one Textual message per batch out."""

from __future__ import annotations

import threading
from typing import Any, Callable, Generic, TypeVar

from textual.message import Message
from textual.message_pump import MessagePump

T = TypeVar("T")


class Inbox(Generic[T]):
    """A thread-safe mailbox that wakes a Textual message pump once per batch.

    `put` may be called from any thread. The first item after a `drain` posts
    `make_message(self)` to `target`; later items just queue up until the UI
    drains them, so the UI sees a growing batch instead of a flood of messages
    when it is busy. After `close` everything put is dropped.
    """

    def __init__(self, target: MessagePump, make_message: Callable[["Inbox[T]"], Message], *, tag: Any = None) -> None:
        self._target = target
        self._make_message = make_message
        self._lock = threading.Lock()
        self._items: list[T] = []
        self._posted = False
        self._closed = False
        self.tag = tag  # whatever the owner wants to recognise this inbox by

    def put(self, item: T) -> None:
        with self._lock:
            if self._closed:
                return
            self._items.append(item)
            if self._posted:
                return
            self._posted = True
        self._target.post_message(self._make_message(self))

    def drain(self) -> list[T]:
        with self._lock:
            items, self._items = self._items, []
            self._posted = False
        return items

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._items = []

    @property
    def closed(self) -> bool:
        return self._closed
