"""Pure: a run's expected wall time from the positions it will compute and the speed an earlier run recorded.

The wall time of a run is its fixed part (starting the worker, loading the model and data, checkpoints, the test
split), its training steps (positions over the training speed) and its validations (positions over the validation
speed: forward passes only, so faster). An earlier run gives all three: its recorded training speed
(`positions_per_s`, worker/throughput.py), its validations' seconds against the positions they computed, and the
rest of its wall time. A run of another model scales the speed by the parameter counts (positions times parameters
per second held constant), which is rougher: the estimate says so.
"""

from __future__ import annotations

from dataclasses import dataclass

VALIDATION_SPEEDUP = 3.0  # a forward pass against forward, backward and update: used when the run had no validation


@dataclass(frozen=True)
class Speed:
    """What an earlier finished run measured on this machine."""

    run_id: int
    positions_per_s: float  # training steps
    total_params: int | None
    fixed_s: float  # its wall time outside training steps and validations
    val_positions_per_s: float | None = None  # None: not measured (VALIDATION_SPEEDUP times the training speed)

    @property
    def position_params_per_s(self) -> float | None:
        """The speed normalised by model size: positions times parameters per second."""
        return self.positions_per_s * self.total_params if self.total_params else None


@dataclass(frozen=True)
class WallEstimate:
    seconds: float
    train_s: float
    val_s: float
    fixed_s: float
    positions_per_s: float  # the training speed used (scaled for another model)
    run_id: int
    same_model: bool

    @property
    def basis(self) -> str:
        """'by run 12's speed: 1,850 positions/s', with the caveat for another model's speed."""
        text = f"by run {self.run_id}'s speed: {self.positions_per_s:,.0f} positions/s"
        return text if self.same_model else text + ", scaled from another model's size: less certain"


def scaled_speed(speed: Speed, total_params: int | None, same_model: bool) -> float | None:
    """Training positions per second for this run's model: the earlier run's own, or scaled by parameter counts."""
    if same_model:
        return speed.positions_per_s
    if speed.position_params_per_s is None or not total_params:
        return None
    return speed.position_params_per_s / total_params


def expected_wall(train_positions: float, val_positions: float, speed: Speed, total_params: int | None,
                  same_model: bool) -> WallEstimate | None:
    """The run's wall time at this speed; None when a speed for its model cannot be had."""
    rate = scaled_speed(speed, total_params, same_model)
    if rate is None or rate <= 0:
        return None
    val_rate = speed.val_positions_per_s * rate / speed.positions_per_s if speed.val_positions_per_s else (
        VALIDATION_SPEEDUP * rate)
    train_s = train_positions / rate
    val_s = val_positions / val_rate
    return WallEstimate(speed.fixed_s + train_s + val_s, train_s, val_s, speed.fixed_s, rate, speed.run_id,
                        same_model)
