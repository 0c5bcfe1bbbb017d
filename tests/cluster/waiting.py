"""Polling helpers: controllers converge asynchronously, so tests wait for a state, never sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeoutError(AssertionError):
    """The awaited state did not arrive; carries the last value seen for the failure message."""


def wait_for(probe: Callable[[], T], timeout: float, what: str, interval: float = 0.25) -> T:
    """Call `probe` until it returns something truthy and return that; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise WaitTimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def stays(probe: Callable[[], bool], duration: float, what: str, interval: float = 0.5) -> None:
    """Assert `probe` holds for the whole of `duration` s (e.g. a pod that must stay Pending)."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if not probe():
            raise AssertionError(f"{what} stopped holding")
        time.sleep(interval)
