"""Tight batch padding: the same compiled shapes as mlx-lm's batches, with less padding in each.

mlx-lm's `iterate_batches` pads every row of a batch to one plus the next multiple of 32 tokens, so the
compiled training step sees few distinct shapes (each new shape is traced, compiled and, on the GPU, given
new kernels and graphs: the first steps at a shape cost far more than the others). Rows of 1,159 tokens
become 1,185 (1,184 positions after the one-token shift), 2% more work than the tokens themselves.

Here each of those shapes is cut down to what its batches need: one plus the longest row's positions, rounded
up to a multiple of 8 (1,161 for the rows above). The batches are known before training (mlx-lm cuts the set
into fixed groups once, then shuffles their order), so each shape's longest row is too. The number of shapes stays
mlx-lm's, each is at most mlx-lm's length, and the padded tail is masked out of the loss as before. A run shorter
than one pass over its training set keeps mlx-lm's padding (tight_applies).

A length-grouped run (`batch_grouping: length`) goes further: each batch gets its own row length, one plus its own
longest row's positions rounded up to 8 (`grouped_row_length`). Its batches are rows of like length sorted over the
whole set, so the top of mlx-lm's 32-token shape is a whole shape's worth of padding for most of them (about 17
positions a row of 294 at 512 tokens); with its own length a batch pads only to the next 8. That makes up to four
times as many shapes to compile, each once (bench/README.md measures what it costs). File order keeps the table of
mlx-lm's shapes above: its batches' longest rows are of every length, so per-batch shapes would save little there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import mlx.core as mx
import numpy as np

MLX_LM_PAD_TO = 32  # mlx-lm's iterate_batches: rows padded to one plus a multiple of this
TIGHT_MULTIPLE = 8  # positions per row rounded up to this (matrix units work in tiles of 8 or 16)
GROUPED_MULTIPLE = 8  # a length-grouped batch's positions per row rounded up to this, batch by batch


def round_up(value: int, multiple: int) -> int:
    return multiple * -(-value // multiple)


def mlx_lm_row_length(longest: int, max_seq_length: int) -> int:
    """The row length mlx-lm gives a batch whose longest example has `longest` tokens."""
    return min(1 + round_up(longest, MLX_LM_PAD_TO), max_seq_length)


def batch_longest(lengths_in_order: Sequence[int], batch_size: int, ranks: int = 1) -> list[int]:
    """The longest example of each batch (of each rank's share) that mlx-lm's iterate_batches cuts from a set
    whose examples, in its batching order, have `lengths_in_order` tokens."""
    longest = []
    for start in range(0, len(lengths_in_order) - batch_size + 1, batch_size):
        for rank in range(ranks):
            share = lengths_in_order[start + rank: start + batch_size: ranks]
            if share:
                longest.append(max(share))
    return longest


def tight_row_lengths(longest_per_batch: Iterable[int], max_seq_length: int) -> dict[int, int]:
    """For each row length mlx-lm will use, the tight one: one plus the positions its longest batch needs
    (that batch's longest example less one), rounded up to TIGHT_MULTIPLE; never longer than mlx-lm's."""
    needed: dict[int, int] = {}
    for longest in longest_per_batch:
        shape = mlx_lm_row_length(longest, max_seq_length)
        needed[shape] = max(needed.get(shape, 0), longest)
    return {shape: min(shape, 1 + round_up(longest - 1, TIGHT_MULTIPLE)) for shape, longest in needed.items()}


def grouped_row_length(width: int, longest: int, multiple: int = GROUPED_MULTIPLE) -> int:
    """The row length of a length-grouped batch that mlx-lm made `width` wide and whose longest row (as truncated)
    has `longest` tokens: one plus that row's positions rounded up to `multiple`, never longer than mlx-lm's."""
    return min(width, 1 + round_up(longest - 1, multiple))


def example_lengths(dataset: Any) -> list[int]:
    """Each example's token count, in the order mlx-lm's iterate_batches cuts batches from: sorted by its own
    length measure (for a CacheDataset, the raw record's length, which leaves most sets in file order)."""
    if hasattr(dataset, "itemlen"):
        order = sorted(range(len(dataset)), key=dataset.itemlen)
    else:
        order = sorted(range(len(dataset)), key=lambda i: len(dataset[i][0]))
    return [len(dataset[i][0]) for i in order]


def tightened(batches: Iterable[tuple[mx.array, mx.array]], row_length: Callable[[int, int], int]
              ) -> Iterator[tuple[mx.array, mx.array]]:
    """mlx-lm's (tokens, lengths) batches with each row cut to `row_length(its current length, the batch's longest
    row)`."""
    for tokens, lengths in batches:
        width = row_length(tokens.shape[1], int(np.array(lengths)[:, 1].max()))
        # a fresh contiguous array (a host copy of a few thousand ids), not a strided view, goes to the step
        yield (mx.array(np.array(tokens)[:, :width]) if width < tokens.shape[1] else tokens), lengths


def tight_applies(batch_padding: str, steps: int, batch_size: int, examples: int) -> bool:
    """Whether to pad tight: asked for, and the run reads every example at least once. The table needs every
    example's tokens up front (about 0.7 ms an example for a chat set); over an epoch or more mlx-lm tokenizes them
    all anyway, in a shorter run that would be extra work for a saving of a few percent of the steps."""
    return batch_padding == "tight" and steps * batch_size >= examples


def padded_batches(batches: Iterable[tuple[mx.array, mx.array]], kwargs: dict[str, Any], batch_padding: str,
                   steps: int, batch_grouping: str = "file_order", multiple: int = GROUPED_MULTIPLE
                   ) -> Iterable[tuple[mx.array, mx.array]]:
    """The batches mlx-lm's iterate_batches(**kwargs) makes for a run of `steps` steps, padded as the run's
    batch_padding asks: tight, each batch its own row length when grouped by length (rounded up to `multiple`),
    else each of mlx-lm's shapes cut to its longest batch."""
    if not tight_applies(batch_padding, steps, kwargs["batch_size"], len(kwargs["dataset"])):
        return batches
    if batch_grouping == "length":
        return tightened(batches, lambda width, longest: grouped_row_length(width, longest, multiple))
    lengths = example_lengths(kwargs["dataset"])
    ranks = kwargs["comm_group"].size() if kwargs.get("comm_group") is not None else 1
    table = tight_row_lengths(batch_longest(lengths, kwargs["batch_size"], ranks), kwargs["max_seq_length"])
    return tightened(batches, lambda width, _longest: table.get(width, width))
