"""Time sources. The app reads time only through a `Clock`, so tests can fix it."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds from an arbitrary start; used for rates and ETAs."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch; stored with messages."""

    def local(self, timestamp: float) -> datetime:
        """`timestamp` as a datetime for display."""


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def local(self, timestamp: float) -> datetime:
        return datetime.fromtimestamp(timestamp)


class FixedClock:
    """A clock that only moves when told to (tests, snapshots). Displays UTC."""

    def __init__(self, start: float = 1_767_268_800.0) -> None:  # 2026-01-01 12:00 UTC
        self._wall = start
        self._mono = 1000.0

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._wall

    def local(self, timestamp: float) -> datetime:
        return datetime.fromtimestamp(timestamp, tz=timezone.utc)

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds
