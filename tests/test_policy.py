"""Pure policy: best checkpoint, ETA, durations."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlmodel import Session

from app.contract.policy import (
    EarlyStopDecision,
    best_checkpoint,
    divergence,
    early_stop_decision,
    eta_seconds,
    format_duration,
    overfitting_spans,
)


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


def decide(losses: list[float], patience: int = 2, min_delta: float = 0.0, step: int = 100) -> EarlyStopDecision:
    return early_stop_decision([(i * step, v) for i, v in enumerate(losses)], patience=patience, min_delta=min_delta)


def test_reference_run_stops_at_1300_on_the_tie_at_1200() -> None:
    # val loss every 100 iterations from the reference run (0 is the baseline)
    losses = [1.017, 0.326, 0.306, 0.310, 0.295, 0.287, 0.284, 0.272, 0.270, 0.268, 0.273, 0.286, 0.268, 0.293]
    for n in range(1, len(losses)):
        assert not decide(losses[:n], patience=3).stop
    decision = decide(losses, patience=2)
    assert not decision.stop and decision.best_iteration == 1200  # the tie moved the reference
    decision = decide([*losses, 0.301], patience=2)
    assert decision.stop and (decision.best_iteration, decision.best_loss) == (1200, 0.268)
    assert decision.reason(1400) == (
        "validation loss has not improved on 0.268 (iteration 1,200) for 2 evaluations; stopped at iteration 1,400"
    )


def test_plateau_stops_after_patience() -> None:
    assert not decide([1.0, 0.5, 0.6]).stop
    assert decide([1.0, 0.5, 0.6, 0.7]).stop
    assert decide([1.0, 0.5, 0.5000001, 0.51], patience=2).stop


def test_noise_within_min_delta_is_not_improvement() -> None:
    decision = decide([1.0, 0.5, 0.49, 0.495], patience=2, min_delta=0.02)
    assert decision.stop and decision.best_iteration == 100
    assert not decide([1.0, 0.5, 0.49, 0.47], patience=2, min_delta=0.02).stop


def test_improvement_on_the_last_evaluation_resets_the_count() -> None:
    decision = decide([1.0, 0.5, 0.6, 0.4], patience=2)
    assert not decision.stop and decision.best_iteration == 300 and decision.evaluations_since_best == 0


def test_nan_never_improves_and_empty_never_stops() -> None:
    assert decide([1.0, float("nan"), float("nan")], patience=2).stop
    assert not decide([], patience=1).stop


def test_overfitting_is_where_val_rises_while_train_falls() -> None:
    train = [(100, 0.33), (200, 0.31), (300, 0.30), (400, 0.25), (500, 0.20), (600, 0.22)]
    val = [(0, 1.0), (100, 0.32), (200, 0.30), (300, 0.31), (400, 0.33), (500, 0.34), (600, 0.35)]
    # 200→300: val up, train down; 300→400, 400→500 as well (merged); 500→600 train rose too
    assert overfitting_spans(train, val) == [(200, 500)]
    assert overfitting_spans(train, [(0, 1.0), (100, 0.32), (200, 0.321)]) == []  # noise, not a rise
    assert overfitting_spans(train, []) == []
    assert overfitting_spans([], val) == []


def test_divergence_names_the_loss_the_step_and_what_to_do() -> None:
    assert divergence("train", 1.25, 10, 1e-3) is None
    message = divergence("train", float("nan"), 120, 1e-3)
    assert message is not None and "train loss became nan at iteration 120" in message and "0.001" in message
    assert divergence("validation", float("inf"), 40, None) is not None


def test_a_nan_train_report_ends_the_run_instead_of_being_stored(tmp_path: Path) -> None:
    """The worker's own callback, with a real report writer on a real database."""
    from app.db import make_engine
    from app.tables import Run
    from worker.reporting import ReportWriter
    from worker.train import DatabaseCallback, TrainingDiverged

    db = tmp_path / "runs.db"
    engine = make_engine(db)
    with Session(engine) as session:
        session.add(Run(name="diverging"))
        session.commit()
    engine.dispose()
    writer = ReportWriter(db, 1).start()
    callback = DatabaseCallback(writer)
    report = {"iteration": 10, "train_loss": 2.5, "learning_rate": 1e-3, "iterations_per_second": 1.0,
              "tokens_per_second": 100.0, "trained_tokens": 1000, "peak_memory": 0.1}
    callback.on_train_loss_report(report)
    with pytest.raises(TrainingDiverged, match="iteration 20"):
        callback.on_train_loss_report({**report, "iteration": 20, "train_loss": float("nan")})
    writer.close()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT iteration FROM trainreport").fetchall() == [(10,)]
    conn.close()
