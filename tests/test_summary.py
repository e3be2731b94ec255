"""Pure parts of the run figures, the runs list filter and the compare table (no server, no database)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.runs.store.listing import (
    MISSING,
    RunFilter,
    RunListError,
    clean_name,
    clean_notes,
    differing_keys,
    flatten_config,
    parse_filter,
    parse_ids,
    short_name,
    shown_value,
    status_values,
)
from app.runs.store.summary import TrainFigures, ValFigures, improvement, summary_view, wall_seconds


def test_improvement_is_the_drop_from_the_first_validation_to_the_best() -> None:
    drop, fraction = improvement(2.0, 0.5)  # type: ignore[misc]
    assert drop == pytest.approx(1.5) and fraction == pytest.approx(0.75)
    assert improvement(None, 0.5) is None and improvement(2.0, None) is None
    assert improvement(0.0, 0.0) == (0.0, None)  # no fraction of a zero loss


def test_wall_seconds_runs_to_the_end_or_to_now_and_treats_naive_times_as_utc() -> None:
    start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    now = start + timedelta(minutes=5)
    assert wall_seconds(None, None, now) is None
    assert wall_seconds(start, None, now) == 300.0
    assert wall_seconds(start, start + timedelta(seconds=42), now) == 42.0
    assert wall_seconds(start.replace(tzinfo=None), start + timedelta(seconds=7), now) == 7.0
    assert wall_seconds(start, start - timedelta(seconds=1), now) == 0.0  # clocks never give a negative time


def test_summary_view_of_a_run_with_and_without_reports() -> None:
    train = TrainFigures(reports=8, avg_tokens_per_second=1234.5, avg_iterations_per_second=2.5,
                         total_tokens=40_000, peak_memory=0.25)
    val = ValFigures(first_iteration=0, first_loss=4.0, best_iteration=40, best_loss=3.0)
    view = summary_view(train, val, 65.0, 2.9)
    assert view["best_val_loss"] == 3.0 and view["best_val_iteration"] == 40
    assert view["improvement_abs"] == pytest.approx(1.0) and view["improvement_pct"] == pytest.approx(25.0)
    assert view["avg_tokens_per_second"] == 1234.5 and view["avg_iterations_per_second"] == 2.5
    assert view["total_tokens"] == 40_000 and view["peak_memory"] == 0.25
    assert view["wall_time"] == "1m 05s" and view["test_loss"] == 2.9

    empty = summary_view(None, None, None, None)
    assert empty["best_val_loss"] is None and empty["improvement_pct"] is None and empty["reports"] == 0
    assert empty["wall_time"] == "—"


def test_status_filters_cover_active_ended_and_each_status() -> None:
    assert status_values("") is None
    assert set(status_values("active") or []) == {"queued", "starting", "running", "stopping"}
    assert set(status_values("ended") or []) == {"completed", "stopped", "early_stopped", "failed", "interrupted"}
    assert status_values("failed") == ["failed"]
    assert parse_filter(" running ", "  lr sweep ") == RunFilter("running", "lr sweep")
    assert RunFilter("", "x").query() == {"q": "x"}
    with pytest.raises(RunListError, match="unknown status filter 'done': expected one of active, ended"):
        parse_filter("done", "")


def test_names_and_notes_are_checked() -> None:
    assert clean_name("  lr   1e-4 sweep ") == "lr 1e-4 sweep"
    with pytest.raises(RunListError, match="name must not be blank"):
        clean_name("   ")
    with pytest.raises(RunListError, match="201 characters long; at most 200"):
        clean_name("x" * 201)
    assert clean_notes("  tried rank 16\n") == "tried rank 16"
    with pytest.raises(RunListError, match="at most 5,000"):
        clean_notes("x" * 5001)


def test_short_names_of_models_and_datasets() -> None:
    assert short_name("/work/data/models/tiny-mistral") == "tiny-mistral"
    assert short_name("/work/data/contact-center/") == "contact-center"
    assert short_name("mistralai/Mistral-7B-v0.1") == "Mistral-7B-v0.1"


def test_parse_ids_accepts_commas_and_repeats_and_names_bad_input() -> None:
    assert parse_ids(["3,1", "2", "3"]) == [3, 1, 2]
    with pytest.raises(RunListError, match="'x' is not a run id"):
        parse_ids(["1,x"])
    with pytest.raises(RunListError, match="pick at least one run"):
        parse_ids([])
    with pytest.raises(RunListError, match="at most 8"):
        parse_ids([",".join(str(i) for i in range(1, 10))])


def test_flatten_config_joins_nested_keys() -> None:
    config = {"lora_parameters": {"rank": 8, "scale": 20.0}, "early_stopping": {}, "iters": 100,
              "lr_schedule": {"name": "cosine_decay", "arguments": [1e-4, 1000]}}
    assert flatten_config(config) == {
        "lora_parameters.rank": 8, "lora_parameters.scale": 20.0, "early_stopping": {}, "iters": 100,
        "lr_schedule.name": "cosine_decay", "lr_schedule.arguments": [1e-4, 1000],
    }


def test_differing_keys_lists_only_what_differs() -> None:
    a = {"name": "a", "learning_rate": 1e-3, "batch_size": 4, "lora_parameters": {"rank": 8, "scale": 20.0}}
    b = {"name": "b", "learning_rate": 1e-4, "batch_size": 4, "lora_parameters": {"rank": 16, "scale": 20.0}}
    c = {"name": "c", "learning_rate": 1e-4, "batch_size": 4, "lora_parameters": {"rank": 8, "scale": 20.0},
         "early_stopping": {"patience": 2}}
    diff = dict(differing_keys([a, b, c]))
    assert set(diff) == {"learning_rate", "lora_parameters.rank", "early_stopping.patience"}  # not name
    assert diff["learning_rate"] == [1e-3, 1e-4, 1e-4]
    assert diff["early_stopping.patience"] == [MISSING, MISSING, 2]
    assert differing_keys([a, {**a, "name": "other"}]) == []
    resumed = dict(differing_keys([{"resume_from": None}, {"resume_from": {"run_id": 3, "iteration": 20}}]))
    assert set(resumed) == {"resume_from.run_id", "resume_from.iteration"}  # no separate "resume_from: null" row
    shown = [shown_value(v) for v in (MISSING, "adamw", 0.001, None, [1, 2])]
    assert shown == ["—", "adamw", "0.001", "null", "[1, 2]"]


def test_a_first_validation_landing_between_the_two_reads_is_left_for_the_next(tmp_path: Path) -> None:
    """val_figures reads the first validations, then the best ones; a worker's first report committed in between
    (SQLite reads are no snapshot across statements) made the run's page answer 500. It is counted next time."""
    from sqlalchemy import event
    from sqlmodel import Session

    from app.db import make_engine
    from app.runs.store.summary import val_figures
    from app.tables import Run, ValReport

    engine = make_engine(tmp_path / "race.db")
    with Session(engine) as session:
        run = Run(name="reporting", status="running")
        session.add(run)
        session.commit()
        run_id = run.id
    assert run_id is not None
    reads: list[str] = []

    def worker_reports_after_the_first_read(conn: object, cursor: object, statement: str, *_: object) -> None:
        reads.append(statement)
        if len(reads) == 1:
            with sqlite3.connect(tmp_path / "race.db") as worker:
                worker.execute("INSERT INTO valreport (run_id, iteration, val_loss, val_time, batches, recorded_at)"
                               " VALUES (?, 0, 2.5, 0.1, 1, '2026-12-07 10:00:00')", (run_id,))

    event.listen(engine, "after_cursor_execute", worker_reports_after_the_first_read)
    with Session(engine) as session:
        assert val_figures(session, [run_id]) == {}  # the best read saw it, the first read did not
    event.remove(engine, "after_cursor_execute", worker_reports_after_the_first_read)
    with Session(engine) as session:
        assert val_figures(session, [run_id]) == {run_id: ValFigures(0, 2.5, 0, 2.5)}
        assert session.get(ValReport, 1) is not None
    engine.dispose()
