"""Per-step wall-clock times, as the provenance and job records keep them."""

from __future__ import annotations

import time

__all__ = ["Laps"]


class Laps:
    """``laps.lap("step")`` records the seconds since the previous lap (or since creation)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._last, 4)
        self._last = now
