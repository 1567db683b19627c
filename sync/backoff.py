"""Exponential backoff with jitter for every retry towards the hub."""

from __future__ import annotations

import random


class Backoff:
    """Delays of base·2ⁿ capped at `cap`, each drawn from [delay/2, delay] ("equal jitter").

    The jitter spreads the retries of many tills after a hub outage; the lower half-bound
    keeps the delay growing so that a down hub is not hammered.
    """

    def __init__(
        self, base: float = 0.5, cap: float = 60.0, rng: random.Random | None = None
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError("need 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        delay = min(self.cap, self.base * (2 ** min(self.failures, 32)))
        self.failures += 1
        return float(delay / 2 + self._rng.uniform(0, delay / 2))

    def reset(self) -> None:
        self.failures = 0
