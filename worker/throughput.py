"""How fast a run's training steps compute: positions (rows times width of each batch) against the seconds spent
inside mlx-lm's steps, recorded on the run when it ends so that the next run's pre-start estimate can time itself
by it (app/runs/duration/).

The seconds are those between handing a batch to mlx-lm's loop and its asking for the next one: the forward and
backward pass, the optimizer update and mlx-lm's own reporting. Validation, checkpoints and heartbeats run while
the next batch is fetched, outside that window. A batch whose step is never seen to end (the last one: mlx-lm stops
asking) is counted in neither figure.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class StepClock:
    """Positions computed and seconds spent in the training steps that were timed."""

    positions: int = 0
    seconds: float = 0.0

    def timed(self, batches: Iterable[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
        """mlx-lm's (tokens, lengths) batches, each step's time and positions added once it returns."""
        for batch in batches:
            tic = time.perf_counter()
            yield batch
            self.seconds += time.perf_counter() - tic
            rows, width = batch[0].shape[0], batch[0].shape[1]
            self.positions += int(rows) * int(width)

    @property
    def positions_per_s(self) -> float | None:
        return self.positions / self.seconds if self.positions and self.seconds > 0 else None
