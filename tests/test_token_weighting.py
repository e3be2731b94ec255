"""The token-weighted training loss of length-grouped runs: its constant is the mean trained tokens of the batches
mlx-lm cuts (per rank), it divides the batch's summed loss by that constant while training and is mlx-lm's mean
otherwise, and the train loss reported is the window's mean per trained token."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import pytest
from mlx_lm.tuner import trainer
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.tuner.datasets import CacheDataset

from worker.length_grouping import LengthSorted
from worker.token_weighting import (
    TokenMeanTrainLoss,
    batching_rows,
    row_trained_tokens,
    token_weighted_loss,
    tokens_per_batch,
    training_loss,
)
from worker.train import SilentUI

VOCAB = 64


class Records:
    """mlx-lm's dataset protocol over rows of token ids with a prompt offset (as mask_prompt gives)."""

    def __init__(self, rows: list[tuple[int, int]]) -> None:
        self._rows = [{"ids": [1 + i % (VOCAB - 1) for i in range(n)], "offset": offset} for n, offset in rows]

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return self._rows[idx]

    def process(self, row: dict[str, Any]) -> tuple[list[int], int]:
        return row["ids"], row["offset"]


class Group:
    """A rank of a two-process group, as mlx-lm's iterate_batches asks of one."""

    def __init__(self, rank: int) -> None:
        self._rank = rank

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return 2


class Tiny(nn.Module):
    """A next-token model small enough to train in a test: an embedding and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, VOCAB)

    def __call__(self, inputs: mx.array) -> mx.array:
        return self.head(self.embed(inputs))


def rows_of(count: int, seed: int = 0) -> list[tuple[int, int]]:
    """(length, offset) rows of very different lengths, some over 96 tokens, some with a prompt offset."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        length = rng.choice([rng.randint(3, 20), rng.randint(30, 90), rng.randint(97, 140)])
        rows.append((length, rng.choice([0, 0, rng.randint(1, length)])))
    return rows


def mask_count(lengths: mx.array, width: int) -> int:
    """The trained tokens mlx-lm's default_loss counts in a batch of this width (its own mask)."""
    steps = mx.arange(1, width)
    mask = mx.logical_and(steps >= lengths[:, 0:1], steps <= lengths[:, 1:])
    return int(mask.sum().item())


def test_a_rows_trained_tokens_are_what_mlx_lms_mask_counts() -> None:
    assert row_trained_tokens(10, 0, 96) == 10  # positions 1..10: one past the last token's target, as mlx-lm
    assert row_trained_tokens(10, 4, 96) == 7  # positions 4..10
    assert row_trained_tokens(200, 0, 96) == 95  # cut to 96, filling its batch: positions 1..95
    assert row_trained_tokens(200, 120, 96) == 0  # the completion starts past the cut


@pytest.mark.parametrize("ranks", [1, 2])
def test_tokens_per_batch_is_the_mean_of_the_batches_mlx_lm_cuts(ranks: int) -> None:
    rows = rows_of(50)  # 12 batches of 4, two left out (the longest, once sorted)
    sorted_set = LengthSorted(CacheDataset(Records(rows)))
    counts = []
    for rank in range(ranks):
        group = Group(rank) if ranks > 1 else None
        for tokens, lengths in trainer.iterate_batches(sorted_set, 4, 96, comm_group=group):
            counts.append(mask_count(lengths, int(tokens.shape[1])))
    assert len(counts) == 12 * ranks
    expected = sum(counts) / len(counts)
    assert tokens_per_batch(batching_rows(sorted_set), 4, 96, ranks) == pytest.approx(expected, abs=1e-9)


def test_training_divides_the_summed_loss_by_the_constant_and_evaluation_keeps_the_mean() -> None:
    mx.random.seed(0)
    model = Tiny()
    batch = mx.array([[1, 5, 9, 2, 7, 0, 0, 0], [3, 4, 8, 6, 2, 9, 11, 5]])
    lengths = mx.array([[1, 5], [3, 8]])  # row 0: positions 1..5; row 1: 3..7 (it fills its batch)
    logits = model(batch[:, :-1])
    ce = nn.losses.cross_entropy(logits, batch[:, 1:])
    ce_sum = float(ce[0, 0:5].sum().item() + ce[1, 2:7].sum().item())
    weighted = token_weighted_loss(4.0)
    model.train()
    value, ntoks = weighted(model, batch, lengths)
    assert int(ntoks.item()) == 10
    assert float(value.item()) == pytest.approx(ce_sum / 4.0, rel=1e-5)
    model.eval()
    value, ntoks = weighted(model, batch, lengths)
    assert int(ntoks.item()) == 10
    assert float(value.item()) == pytest.approx(ce_sum / 10, rel=1e-5)


def test_file_order_keeps_mlx_lms_loss_and_length_grouping_weighs_tokens() -> None:
    rows = rows_of(24, seed=2)
    dataset = CacheDataset(Records(rows))
    loss, constant = training_loss(dataset, "file_order", 4, 96)
    assert loss is trainer.default_loss and constant is None
    loss, constant = training_loss(dataset, "length", 4, 96, ranks=2)
    assert loss is not trainer.default_loss
    assert constant == tokens_per_batch(batching_rows(LengthSorted(dataset)), 4, 96, 2)


class Reports(TrainingCallback):  # type: ignore[misc]
    def __init__(self) -> None:
        self.train: list[dict[str, Any]] = []

    def on_train_loss_report(self, train_info: dict[str, Any]) -> None:
        self.train.append(train_info)


def test_each_reported_train_loss_is_its_windows_mean_per_trained_token(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Reports every 3 of 8 steps with a learning rate of 0 (the weights never change): each reported train loss
    is the summed loss of its window's batches over their trained tokens, as mlx-lm's own loss measures them."""
    monkeypatch.setattr(trainer, "TrainUI", SilentUI)
    mx.random.seed(1)
    model = Tiny()
    dataset = CacheDataset(Records(rows_of(32, seed=4)))
    loss, constant = training_loss(dataset, "length", 4, 96)
    seen: list[tuple[mx.array, mx.array]] = []

    def iterate_batches(**kwargs: Any) -> Any:
        for batch in trainer.iterate_batches(**{**kwargs, "dataset": LengthSorted(dataset)}):
            seen.append(batch)
            yield batch

    reports = Reports()
    args = trainer.TrainingArgs(batch_size=4, iters=8, steps_per_report=3, steps_per_eval=100, steps_per_save=100,
                                max_seq_length=96, adapter_file=str(tmp_path / "adapters.safetensors"))
    trainer.train(model=model, optimizer=optim.SGD(learning_rate=0.0), train_dataset=dataset, args=args, loss=loss,
                  iterate_batches=iterate_batches, training_callback=TokenMeanTrainLoss(reports, constant))
    model.eval()
    expected = []
    for window in (seen[0:3], seen[3:6], seen[6:8]):
        measured = [trainer.default_loss(model, *batch) for batch in window]
        summed = sum(float(mean.item()) * int(ntoks.item()) for mean, ntoks in measured)
        expected.append(summed / sum(int(ntoks.item()) for _, ntoks in measured))
    assert len(set(expected)) == 3  # windows of different batches (a check that tells them apart)
    assert [r["train_loss"] for r in reports.train] == pytest.approx(expected, rel=1e-5)


def test_the_report_converts_each_window_by_its_own_steps_and_tokens() -> None:
    reports = Reports()
    report = TokenMeanTrainLoss(reports, 100.0, ranks=2)
    report.on_train_loss_report({"iteration": 10, "train_loss": 1.5, "trained_tokens": 4000})
    report.on_train_loss_report({"iteration": 15, "train_loss": 2.0, "trained_tokens": 5000})
    assert [r["train_loss"] for r in reports.train] == pytest.approx([1.5 * 10 * 2 * 100 / 4000,
                                                                     2.0 * 5 * 2 * 100 / 1000])
    plain = Reports()
    TokenMeanTrainLoss(plain, None).on_train_loss_report({"iteration": 10, "train_loss": 1.5,
                                                          "trained_tokens": 4000})
    assert plain.train[0]["train_loss"] == 1.5
