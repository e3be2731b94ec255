"""The training loss of a length-grouped run: every trained token weighs the same in every step.

mlx-lm's `default_loss` is the mean cross-entropy over the batch's own trained tokens. In file order every batch
mixes rows of every length and holds about the same number of tokens, so each token weighs about the same. In a
length-grouped batch (worker/length_grouping.py) four short rows hold few tokens and each of them weighs more than a
token of four long rows: over an epoch the short examples count for more of the updates, the long ones (most of the
validation tokens) for less. The loss here is the batch's summed cross-entropy divided by one constant of the run,
`tokens_per_batch`: the mean number of trained tokens in a batch (per rank, in a run of several) over the training
set as the grouped batches cut it. The gradient of an epoch is then the same sum over tokens as in file order.

The loss is mlx-lm's own mean (`default_loss`) whenever the model is not training (`model.training` is False in
mlx-lm's `evaluate`), so validation and test losses are unchanged. The train loss mlx-lm reports is its per-step
values averaged over the report window; `TokenMeanTrainLoss` turns that back into the window's mean per trained
token (exactly: the window's summed cross-entropy over its trained tokens), so the chart is not tossed up and down by
whether the window drew long or short batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.tuner.trainer import default_loss

from worker.length_grouping import grouped

LossFunction = Callable[[nn.Module, mx.array, mx.array], tuple[mx.array, mx.array]]


def row_trained_tokens(length: int, offset: int, max_seq_length: int) -> int:
    """The tokens mlx-lm's loss mask counts for a row of `length` tokens whose loss starts at `offset`
    (mask_prompt) in a batch wider than the row: positions max(offset, 1)..length, the row cut to max_seq_length
    (a cut row fills its batch, so its last position has no target)."""
    return max(0, min(length + 1, max_seq_length) - max(offset, 1))


def tokens_per_batch(rows: Sequence[tuple[int, int]], batch_size: int, max_seq_length: int, ranks: int = 1) -> float:
    """The mean trained tokens of one rank's share of a batch, over the batches mlx-lm's iterate_batches cuts from
    `rows` ((length, offset) of each example, in its batching order): whole batches of batch_size, the rest left
    out, each split over `ranks`."""
    batches = len(rows) // batch_size
    if batches == 0:
        raise ValueError(f"the training set has fewer than batch_size={batch_size} examples")
    total = sum(row_trained_tokens(length, offset, max_seq_length) for length, offset in rows[:batches * batch_size])
    return max(total / (batches * ranks), 1.0)


def batching_rows(dataset: Any) -> list[tuple[int, int]]:
    """(length, offset) of each example of a dataset in the order mlx-lm's iterate_batches cuts batches from
    (sorted by its itemlen); tokenizes every example (a grouped set's sort does too)."""
    order = sorted(range(len(dataset)), key=dataset.itemlen)
    rows = []
    for idx in order:
        item = dataset[idx]
        tokens, offset = item if len(item) == 2 else (item, 0)
        rows.append((len(tokens), int(offset)))
    return rows


def token_weighted_loss(tokens_per_batch: float) -> LossFunction:
    """mlx-lm's loss with the batch's summed cross-entropy divided by `tokens_per_batch` while training, its own
    mean (summed over the batch's trained tokens) otherwise; both return the batch's trained tokens as mlx-lm's."""

    def loss(model: nn.Module, batch: mx.array, lengths: mx.array) -> tuple[mx.array, mx.array]:
        mean, ntoks = default_loss(model, batch, lengths)
        if not model.training:
            return mean, ntoks
        return mean * (ntoks.astype(mx.float32) / tokens_per_batch), ntoks

    return loss


def training_loss(dataset: Any, batch_grouping: str, batch_size: int, max_seq_length: int,
                  ranks: int = 1) -> tuple[LossFunction, float | None]:
    """The loss to train with and, for a length-grouped run, its tokens_per_batch (None: mlx-lm's default_loss,
    for file order or a set that grouping leaves as it is)."""
    sorted_set = grouped(dataset, batch_grouping)
    if sorted_set is dataset:
        return default_loss, None
    constant = tokens_per_batch(batching_rows(sorted_set), batch_size, max_seq_length, ranks)
    return token_weighted_loss(constant), constant


class TokenMeanTrainLoss(TrainingCallback):  # type: ignore[misc]
    """Hands another callback mlx-lm's train reports with `train_loss` as the window's mean per trained token.

    mlx-lm reports the mean of the window's per-step values over its steps and ranks; with the token-weighted loss
    each is (a rank's summed cross-entropy) / tokens_per_batch, so the window's summed cross-entropy is that mean
    times steps, ranks and tokens_per_batch, and its trained tokens are the report's count since the last one."""

    def __init__(self, inner: TrainingCallback, tokens_per_batch: float | None, ranks: int = 1) -> None:
        self.inner = inner
        self.tokens_per_batch = tokens_per_batch
        self.ranks = ranks
        self.iteration = 0  # mlx-lm's counts at the last report (of this train() call)
        self.trained_tokens = 0

    def on_train_loss_report(self, train_info: dict[str, Any]) -> None:
        info = dict(train_info)
        steps = info["iteration"] - self.iteration
        tokens = info["trained_tokens"] - self.trained_tokens
        self.iteration, self.trained_tokens = info["iteration"], info["trained_tokens"]
        if self.tokens_per_batch is not None and tokens > 0:
            info["train_loss"] = info["train_loss"] * steps * self.ranks * self.tokens_per_batch / tokens
        self.inner.on_train_loss_report(info)

    def on_val_loss_report(self, val_info: dict[str, Any]) -> None:
        self.inner.on_val_loss_report(val_info)
