"""Batches that group examples by their token length, through mlx-lm's own batch iterator.

mlx-lm's `iterate_batches` sorts a set by length, cuts the sorted order into batches and shuffles whole batches
every epoch, so that the rows of a batch are alike and little of it is padding. For a `CacheDataset` it sorts by
`itemlen(idx)`, which is `len(raw record)`: the number of keys of a JSON line, 1 for every `text` record and 1 for
every `messages` one. The sort then keeps file order, and each batch pads to the longest of rows that have nothing
in common.

`LengthSorted` is that dataset with `itemlen` giving the example's token count, so mlx-lm's iterator itself sorts by
tokens: its per-epoch shuffling of whole batches, its striding of a batch over the ranks of a distributed run and its
`max_seq_length` truncation stay as they are, and tight padding (worker/batch_padding.py) reads the same order.
Counting the tokens tokenizes every example once, up front; mlx-lm caches the result and would tokenize each one in
the first epoch anyway.

Validation batches are grouped the same way (worker/train.py hands mlx-lm's `evaluate` the grouped validation
set), so they too compute less padding. The validation loss is the sum of every counted token's loss divided by
the number of counted tokens, and padding is never counted, so which rows share a batch does not enter it: when
every batch is measured (val_batches -1) and the set divides into whole batches, the figure is the same as in
file order up to float rounding. What grouping does change: with val_batches below the whole set, the batches
drawn are groups of like length rather than rows of every length (the same mean, drawn in coarser pieces); and
the rows left over after the last whole batch are the longest ones rather than the file's last ones. Sorting
tokenizes the whole validation set at the first validation rather than batch by batch.

Grouping changes how much each token weighs in training. mlx-lm's loss is the mean over the batch's own tokens: in
file order every batch mixes lengths and holds about as many tokens as any other, so tokens weigh about the same;
grouped, a batch of short rows holds few tokens and each weighs more than one of a long batch, so the short examples
steer more of the epoch's updates and the long ones (most of the validation tokens) fewer. Trained that way, grouped
runs ended an epoch with a validation loss 0.05 to 0.09 above file order's (bench/README.md). A grouped run
therefore trains with worker/token_weighting.py's loss: the batch's summed loss over one constant of the run, the
mean tokens of a batch, so that every token weighs the same in every step.

`UsefulTokens` counts what a run's batches hold: the tokens of their rows against the positions computed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from mlx_lm.tuner.datasets import CacheDataset


class LengthSorted(CacheDataset):  # type: ignore[misc]
    """A CacheDataset whose itemlen is the example's token count; it shares the wrapped one's tokenized cache."""

    def __init__(self, dataset: CacheDataset) -> None:
        super().__init__(dataset._data)
        self._proc_data = dataset._proc_data  # one cache: what either tokenizes, both have

    def itemlen(self, idx: int) -> int:
        return len(self[idx][0])


def grouped(dataset: Any, batch_grouping: str) -> Any:
    """The dataset to hand to mlx-lm's iterate_batches for the run's batch_grouping."""
    if batch_grouping == "length" and isinstance(dataset, CacheDataset):
        return LengthSorted(dataset)
    return dataset


@dataclass
class UsefulTokens:
    """Tokens of the batch rows (after truncation to the batch's width) against the positions computed
    (rows times width), summed over the batches seen."""

    tokens: int = 0
    positions: int = 0

    def add(self, width: int, lengths: Iterable[int]) -> None:
        rows = list(lengths)
        self.tokens += sum(min(length, width) for length in rows)
        self.positions += width * len(rows)

    @property
    def share(self) -> float | None:
        return self.tokens / self.positions if self.positions else None


def counted(batches: Iterable[tuple[Any, Any]], useful: UsefulTokens) -> Iterator[tuple[Any, Any]]:
    """mlx-lm's (tokens, (offset, length) per row) batches, each added to `useful` as it passes."""
    for batch in batches:
        tokens, lengths = batch
        useful.add(int(tokens.shape[1]), np.array(lengths)[:, 1].tolist())
        yield batch
