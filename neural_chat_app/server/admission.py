"""A bounded queue in front of the backend: `max_concurrent` run, `max_queue` wait, the rest get 429."""

from __future__ import annotations

import asyncio


class QueueFull(Exception):
    pass


class Admission:
    def __init__(self, max_concurrent: int, max_queue: int):
        self.max_concurrent = max_concurrent
        self.limit = max_concurrent + max_queue
        self._slots = asyncio.Semaphore(max_concurrent)
        self.running = 0
        self.waiting = 0

    def reserve(self) -> None:
        """Take a place in line now (synchronously, so a burst cannot overshoot), or raise QueueFull."""
        if self.running + self.waiting >= self.limit:
            raise QueueFull(f"{self.running} requests running and {self.waiting} waiting: the server is at capacity")
        self.waiting += 1

    async def acquire(self) -> None:
        """Wait for a slot after `reserve`; on cancellation give the place back."""
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1

    def cancel_reservation(self) -> None:
        self.waiting -= 1

    def release(self) -> None:
        self.running -= 1
        self._slots.release()
