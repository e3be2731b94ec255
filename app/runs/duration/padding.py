"""Pure: the batches a run will compute, from its training split's token lengths, as the worker cuts and pads them.

mlx-lm's `iterate_batches` orders the examples, cuts the order into batches of `batch_size` (a remainder too small
for a batch is never read), shuffles whole batches every epoch and pads each batch's rows to one plus the next
multiple of 32 tokens, at most `max_seq_length`; longer rows are truncated to it. With `batch_grouping: length` the
order is by token count (worker/length_grouping.py); with `file_order` it is the file's, which token statistics do
not keep, so the estimate takes the mean over a few seeded shuffles of the lengths. `batch_padding: tight` cuts each
of mlx-lm's row lengths to what its longest batch needs, rounded up to 8 (worker/batch_padding.py), when the run
reads every example at least once; grouped by length, each batch is cut to what its own longest row needs, rounded
up to 8.

The worker counts a batch's useful tokens as its rows' lengths (at most the width) and its positions as rows times
width (worker/length_grouping.py `UsefulTokens`); these functions count the same.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

MLX_LM_PAD_TO = 32  # as worker/batch_padding.py: mlx-lm pads rows to one plus a multiple of this
TIGHT_MULTIPLE = 8  # tight padding rounds positions up to this
GROUPED_MULTIPLE = 8  # as worker/batch_padding.py: a length-grouped batch's own positions rounded up to this
FILE_ORDER_SHUFFLES = 5  # file order is unknown: the mean over this many seeded shuffles
LengthCounts = list[list[int]]  # [[length, count], ...] as token statistics give them


@dataclass(frozen=True)
class EpochBatches:
    """What one pass over a split computes: its batches, their rows' tokens and the positions computed."""

    batches: int
    tokens: float
    positions: float

    @property
    def useful_share(self) -> float | None:
        return self.tokens / self.positions if self.positions else None

    @property
    def positions_per_batch(self) -> float:
        return self.positions / self.batches if self.batches else 0.0


def expand(counts: LengthCounts) -> list[int]:
    """Each example's length, ascending."""
    return [int(length) for length, count in counts for _ in range(int(count))]


def round_up(value: int, multiple: int) -> int:
    return multiple * -(-value // multiple)


def mlx_lm_width(longest: int, max_seq_length: int) -> int:
    """The row length mlx-lm gives a batch whose longest example has `longest` tokens."""
    return min(1 + round_up(longest, MLX_LM_PAD_TO), max_seq_length)


def tight_widths(longest_per_batch: Sequence[int], max_seq_length: int) -> dict[int, int]:
    """For each of mlx-lm's row lengths, the tight one (worker/batch_padding.py `tight_row_lengths`)."""
    needed: dict[int, int] = {}
    for longest in longest_per_batch:
        shape = mlx_lm_width(longest, max_seq_length)
        needed[shape] = max(needed.get(shape, 0), longest)
    return {shape: min(shape, 1 + round_up(longest - 1, TIGHT_MULTIPLE)) for shape, longest in needed.items()}


def tight_applies(batch_padding: str, steps: int, batch_size: int, examples: int) -> bool:
    """Whether the worker pads tight: asked for, and the run reads every example at least once."""
    return batch_padding == "tight" and steps * batch_size >= examples


def cut(lengths_in_order: Sequence[int], batch_size: int, max_seq_length: int, tight: bool,
        per_batch: bool = False) -> EpochBatches:
    """The batches of one epoch over examples of these lengths in batching order (`per_batch`: tight padding gives
    each batch its own row length, as for a length-grouped run)."""
    batches = [lengths_in_order[start:start + batch_size]
               for start in range(0, len(lengths_in_order) - batch_size + 1, batch_size)]
    longest = [max(batch) for batch in batches]
    table = tight_widths(longest, max_seq_length) if tight else {}
    tokens = positions = 0
    for batch, top in zip(batches, longest, strict=True):
        width = mlx_lm_width(top, max_seq_length)
        width = min(width, 1 + round_up(min(top, max_seq_length) - 1, GROUPED_MULTIPLE)) if tight and per_batch \
            else table.get(width, width)
        tokens += sum(min(length, width) for length in batch)
        positions += width * len(batch)
    return EpochBatches(len(batches), tokens, positions)


def epoch_batches(counts: LengthCounts, batch_size: int, max_seq_length: int, grouping: str,
                  tight: bool = False) -> EpochBatches:
    """One epoch over a split of these lengths: sorted when grouped by length, else the mean of seeded shuffles."""
    lengths = expand(counts)
    if grouping == "length":
        return cut(lengths, batch_size, max_seq_length, tight, per_batch=True)
    runs = []
    for seed in range(FILE_ORDER_SHUFFLES):
        order = list(lengths)
        random.Random(seed).shuffle(order)
        runs.append(cut(order, batch_size, max_seq_length, tight))
    return EpochBatches(runs[0].batches, sum(r.tokens for r in runs) / len(runs),
                        sum(r.positions for r in runs) / len(runs))


@dataclass(frozen=True)
class Plan:
    """The run's training batches: per epoch under its grouping, and in file order for comparison."""

    epoch: EpochBatches
    file_order: EpochBatches
    grouping: str
    tight: bool

    @property
    def useful_share(self) -> float | None:
        return self.epoch.useful_share


def training_plan(counts: LengthCounts, batch_size: int, max_seq_length: int, grouping: str, batch_padding: str,
                  iters: int) -> Plan | None:
    """The training split's batches as the run will cut them; None when the split holds fewer than a batch."""
    examples = sum(int(count) for _, count in counts)
    if examples < batch_size:
        return None
    tight = tight_applies(batch_padding, iters, batch_size, examples)
    epoch = epoch_batches(counts, batch_size, max_seq_length, grouping, tight)
    in_file_order = epoch if grouping != "length" else epoch_batches(counts, batch_size, max_seq_length,
                                                                     "file_order", tight)
    return Plan(epoch, in_file_order, grouping, tight)


def validations(iters: int, steps_per_eval: int, save_every: int, full_at_checkpoints: bool) -> tuple[int, int]:
    """(partial, whole) validations of a run that completes: before the first step, every steps_per_eval steps,
    at each checkpoint when full_val_at_checkpoints, and at the end (whole then too when that is on)."""
    partial = whole = 0
    for iteration in range(iters):
        checkpoint = iteration > 0 and iteration % save_every == 0 and full_at_checkpoints
        if checkpoint:
            whole += 1
        elif iteration == 0 or iteration % steps_per_eval == 0:
            partial += 1
    if full_at_checkpoints:
        whole += 1
    else:
        partial += 1
    return partial, whole


def validation_positions(counts: LengthCounts, batch_size: int, max_seq_length: int, val_batches: int,
                         iters: int, steps_per_eval: int, save_every: int, full_at_checkpoints: bool) -> float:
    """Positions the run's validations compute: the valid split in file order (mlx-lm's evaluate does not group it),
    mlx-lm's padding, `val_batches` batches of a random order (-1: all) each time."""
    if sum(int(count) for _, count in counts) < batch_size:
        return 0.0
    epoch = epoch_batches(counts, batch_size, max_seq_length, "file_order")
    per_partial = epoch.positions_per_batch * (epoch.batches if val_batches == -1 else min(val_batches,
                                                                                             epoch.batches))
    partial, whole = validations(iters, steps_per_eval, save_every, full_at_checkpoints)
    return partial * per_partial + whole * epoch.positions
