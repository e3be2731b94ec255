"""The pre-start estimate of a run's useful-token share and wall time: the pure rules against the worker's own
batching (mlx-lm's iterate_batches, worker/length_grouping.py, worker/batch_padding.py) on the same lengths, and the
new-run form's panel in process."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import PROJECT_DIR, InProcess

from app.runs.duration.padding import (
    epoch_batches,
    training_plan,
    validation_positions,
    validations,
)
from app.runs.duration.wall_time import Speed, expected_wall

SEED_LIKE = [[40, 30], [75, 120], [160, 200], [300, 90], [520, 40], [900, 12], [1500, 4]]  # skewed, long tail


def counts_of(lengths: list[int]) -> list[list[int]]:
    tally: dict[int, int] = {}
    for length in lengths:
        tally[length] = tally.get(length, 0) + 1
    return [[length, tally[length]] for length in sorted(tally)]


def worker_epoch(lengths_in_file: list[int], batch_size: int, max_seq_length: int, padding: str, steps: int,
                 grouping: str = "length") -> tuple[int, int]:
    """(tokens, positions) of one epoch as the worker's training iterator counts them: mlx-lm's iterate_batches over
    a dataset it sorts by token count (what LengthSorted gives it), padded as asked, counted by UsefulTokens."""
    from mlx_lm.tuner import trainer

    from worker.batch_padding import padded_batches
    from worker.length_grouping import UsefulTokens, counted

    dataset = [(list(range(1, length + 1)), 0) for length in lengths_in_file]
    kwargs = {"dataset": dataset, "batch_size": batch_size, "max_seq_length": max_seq_length}
    useful = UsefulTokens()
    for _batch in counted(padded_batches(trainer.iterate_batches(**kwargs), kwargs, padding, steps, grouping),
                          useful):
        pass
    return useful.tokens, useful.positions


@pytest.mark.parametrize(("padding", "max_seq_length"), [("mlx_lm", 2048), ("tight", 2048), ("tight", 600)])
def test_length_grouping_counts_what_the_worker_counts(padding: str, max_seq_length: int) -> None:
    lengths = [length for length, count in SEED_LIKE for _ in range(count)]
    random.Random(3).shuffle(lengths)
    tokens, positions = worker_epoch(lengths, 4, max_seq_length, padding, steps=10_000)
    epoch = epoch_batches(counts_of(lengths), 4, max_seq_length, "length", tight=padding == "tight")
    assert (epoch.tokens, epoch.positions) == (tokens, positions)


@pytest.mark.parametrize(("padding", "max_seq_length"), [("mlx_lm", 512), ("tight", 512), ("tight", 300)])
def test_spread_lengths_grouped_count_what_the_worker_counts(padding: str, max_seq_length: int) -> None:
    # lengths of every value, so batches that share one of mlx-lm's shapes have different longest rows: grouped,
    # tight padding cuts each batch to its own, and the estimate must too
    lengths = [round(value) for value in (random.Random(7 + i).lognormvariate(5.6, 0.45) for i in range(600))]
    tokens, positions = worker_epoch(lengths, 4, max_seq_length, padding, steps=10_000)
    epoch = epoch_batches(counts_of(lengths), 4, max_seq_length, "length", tight=padding == "tight")
    assert (epoch.tokens, epoch.positions) == (tokens, positions)
    if padding == "tight":  # each batch its own length: more useful than mlx-lm's shapes cut to their longest batch
        table_tokens, table_positions = worker_epoch(lengths, 4, max_seq_length, padding, 10_000, "file_order")
        assert tokens == table_tokens and positions < table_positions


def test_file_order_is_the_mean_of_shuffled_orders_cut_as_the_worker_cuts() -> None:
    from worker.batch_padding import batch_longest, mlx_lm_row_length

    lengths = [length for length, count in SEED_LIKE for _ in range(count)]
    measured = []
    for seed in range(40):  # files in 40 other orders, cut by the worker's own rules
        order = list(lengths)
        random.Random(100 + seed).shuffle(order)
        widths = [mlx_lm_row_length(top, 2048) for top in batch_longest(order, 4)]
        tokens = sum(min(length, width) for width, start in zip(widths, range(0, len(order) - 3, 4), strict=False)
                     for length in order[start:start + 4])
        measured.append(tokens / (4 * sum(widths)))
    estimate = epoch_batches(SEED_LIKE, 4, 2048, "file_order").useful_share
    assert estimate is not None
    assert abs(estimate - sum(measured) / len(measured)) < 0.03
    grouped = epoch_batches(SEED_LIKE, 4, 2048, "length").useful_share
    assert grouped is not None and grouped > estimate + 0.15  # grouping removes most of file order's padding


def test_tight_padding_applies_only_to_runs_that_read_every_example() -> None:
    assert training_plan(SEED_LIKE, 4, 2048, "length", "tight", iters=10).tight is False  # 40 of 496 examples
    plan = training_plan(SEED_LIKE, 4, 2048, "length", "tight", iters=124)
    assert plan is not None and plan.tight
    assert training_plan([[10, 3]], 4, 2048, "length", "tight", iters=10) is None  # less than one batch


def test_validations_follow_the_worker_schedule() -> None:
    # before step 0, at 200, 400, ..., 800, and at the end (1000)
    assert validations(1000, 200, 100, False) == (6, 0)
    # whole at each checkpoint (100..900) and at the end; partial before step 0 only
    assert validations(1000, 200, 100, True) == (1, 10)
    whole = epoch_batches([[100, 40]], 4, 2048, "file_order").positions
    assert validation_positions([[100, 40]], 4, 2048, -1, 10, 200, 100, False) == 2 * whole
    assert validation_positions([[100, 40]], 4, 2048, 2, 10, 200, 100, False) == 2 * 2 * whole / 10


def test_wall_time_from_an_earlier_run_and_from_another_model() -> None:
    speed = Speed(run_id=12, positions_per_s=1000.0, total_params=1_000_000, fixed_s=5.0, val_positions_per_s=3000.0)
    same = expected_wall(100_000, 30_000, speed, 1_000_000, same_model=True)
    assert same is not None and same.seconds == pytest.approx(5 + 100 + 10)
    assert same.basis == "by run 12's speed: 1,000 positions/s"
    bigger = expected_wall(100_000, 30_000, speed, 2_000_000, same_model=False)
    assert bigger is not None and bigger.seconds == pytest.approx(5 + 200 + 20)
    assert "less certain" in bigger.basis
    assert expected_wall(1, 1, Speed(1, 10.0, None, 0.0), 5, same_model=False) is None  # nothing to scale by


# The form's panel, in process ------------------------------------------------------------------------------------


def write_data(folder: Path) -> Path:
    source = PROJECT_DIR / "data" / "contact-center"
    folder.mkdir(parents=True)
    for split, count in (("train", 40), ("valid", 8)):
        lines = (source / f"{split}.jsonl").read_text().splitlines(True)[:count]
        (folder / f"{split}.jsonl").write_text("".join(lines))
    return folder


def add_stats_and_reference(app_client: InProcess, folder: Path, model: str) -> None:
    """A completed token-statistics job for the folder (as its worker would write it) and a completed run of the
    model that recorded its speed."""
    from sqlmodel import Session

    from app.datasets.registry import files_signature
    from app.datasets.token_stats import KIND, job_key
    from app.tables import Job, Run, ValReport, utcnow

    result = {"splits": {"train": {"lengths": [[60, 20], [200, 20]]}, "valid": {"lengths": [[100, 8]]}}}
    with Session(app_client.engine) as session:
        session.add(Job(kind=KIND, key=job_key(folder, model, files_signature(folder)), status="completed",
                        result_json=json.dumps(result), params_json=json.dumps({"data": str(folder), "model": model})))
        end = utcnow()
        run = Run(name="timed", status="completed", config_json=json.dumps({"model": model, "data": str(folder)}),
                  started_at=end - timedelta(seconds=30), finished_at=end, positions_per_s=1850.0,
                  train_seconds=20.0, train_positions=37_000, total_params=1000)
        session.add(run)
        session.commit()
        session.add(ValReport(run_id=run.id, iteration=0, val_loss=1.0, val_time=2.0, batches=-1))
        session.commit()


def panel(app_client: InProcess, folder: Path, model: str, **values: str) -> str:
    query = {"model": model, "data": str(folder), "batch_size": "4", "iters": "100", **values}
    response = app_client.client.get("/models/info", params=query)
    assert response.status_code == 200, response.text
    return response.text


def test_the_form_panel_offers_to_count_tokens_then_shows_share_and_time(app_client: InProcess, tmp_path: Path,
                                                                         default_model: Path) -> None:
    folder = write_data(tmp_path / "data")
    model = str(default_model)
    text = panel(app_client, folder, model)
    assert 'id="duration-count-tokens"' in text and 'hx-post="/dataset-tools/token-stats"' in text
    assert "hx-get=\"/dataset-tools/token-stats" not in text
    assert 'id="duration-wall"' not in text

    add_stats_and_reference(app_client, folder, model)
    text = panel(app_client, folder, model)
    assert "duration-count-tokens" not in text
    assert "of computed positions (length grouping;" in text and "in file order)" in text
    assert "(by run 1&#39;s speed: 1,850 positions/s)" in text or "(by run 1's speed: 1,850 positions/s)" in text
    assert "useful tokens" in text
    in_file_order = panel(app_client, folder, model, batch_grouping="file_order")
    assert "(file order)" in in_file_order
