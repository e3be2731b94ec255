"""Pure policy: best checkpoint, ETA, durations."""

from __future__ import annotations

from dataclasses import dataclass

from app.policy import best_checkpoint, eta_seconds, format_duration


@dataclass
class Ckpt:
    iteration: int
    val_loss: float | None


def test_best_is_lowest_val_loss() -> None:
    ckpts = [Ckpt(100, 0.5), Ckpt(200, 0.3), Ckpt(300, 0.4)]
    assert best_checkpoint(ckpts) == Ckpt(200, 0.3)


def test_tie_goes_to_the_later_iteration_whatever_the_order() -> None:
    # the reference run: 900 and 1,200 tied at 0.268, 1,200 was chosen
    ckpts = [Ckpt(900, 0.268), Ckpt(1000, 0.273), Ckpt(1200, 0.268), Ckpt(1300, 0.293)]
    assert best_checkpoint(ckpts) == Ckpt(1200, 0.268)
    assert best_checkpoint(list(reversed(ckpts))) == Ckpt(1200, 0.268)


def test_checkpoints_without_validation_are_never_best() -> None:
    assert best_checkpoint([Ckpt(50, None), Ckpt(100, None)]) is None
    assert best_checkpoint([Ckpt(50, None), Ckpt(100, 0.9), Ckpt(150, None)]) == Ckpt(100, 0.9)
    assert best_checkpoint([]) is None


def test_eta_uses_the_average_pace() -> None:
    assert eta_seconds(100, 400, 50.0) == 150.0
    assert eta_seconds(0, 400, 5.0) is None
    assert eta_seconds(400, 400, 50.0) == 0.0


def test_format_duration() -> None:
    assert format_duration(None) == "—"
    assert format_duration(42.4) == "42s"
    assert format_duration(125) == "2m 05s"
    assert format_duration(5 * 3600 + 18 * 60) == "5h 18m"
