"""A clock the test moves by hand, for code that asks an injected clock for the time.

A test module takes the fixture with `from clock import clock` (and the class with `from clock import Clock`).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest


class Clock:
    """A clock the test moves by hand (the store asks it for the time)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += timedelta(minutes=minutes)


@pytest.fixture
def clock() -> Clock:
    return Clock()
