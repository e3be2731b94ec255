"""Length grouping through mlx-lm's own iterate_batches: batches hold rows of like length, whole batches are
shuffled per epoch, ranks stride as before, and the useful-token share counts what the batches hold; a run's
validation batches are grouped too."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from mlx_lm.tuner.datasets import CacheDataset
from mlx_lm.tuner.trainer import iterate_batches

from worker.length_grouping import LengthSorted, UsefulTokens, counted, grouped


class Records:
    """mlx-lm's dataset protocol over records whose `text` is already token ids (process: ids and offset 0)."""

    def __init__(self, lengths: list[int]) -> None:
        self._rows = [{"text": list(range(1, n + 1))} for n in lengths]
        self.processed = 0

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return self._rows[idx]

    def process(self, row: dict[str, Any]) -> tuple[list[int], int]:
        self.processed += 1
        return row["text"], 0


def lengths_of(count: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [int(rng.lognormvariate(6.8, 0.6)) + 2 for _ in range(count)]


def batches(dataset: Any, batch_size: int = 4, max_seq_length: int = 4096, **kwargs: Any) -> list[tuple[Any, Any]]:
    return list(iterate_batches(dataset, batch_size, max_seq_length, seed=1, **kwargs))


def row_lengths(epoch: list[tuple[Any, Any]]) -> list[tuple[int, ...]]:
    return [tuple(sorted(int(n) for n in rows[:, 1].tolist())) for _tokens, rows in epoch]


def chunks(ordered: list[int], size: int) -> list[tuple[int, ...]]:
    return sorted(tuple(ordered[i:i + size]) for i in range(0, len(ordered) - size + 1, size))


def test_the_plain_cache_dataset_keeps_file_order_and_the_sorted_one_groups_by_tokens() -> None:
    lengths = lengths_of(64)
    plain = CacheDataset(Records(lengths))
    sorted_ = LengthSorted(CacheDataset(Records(lengths)))
    # mlx-lm's own sort key: 1 for every record of the plain set, the token count for the sorted one
    assert {plain.itemlen(i) for i in range(len(lengths))} == {1}
    assert [sorted_.itemlen(i) for i in range(len(lengths))] == lengths
    widths_plain = [int(tokens.shape[1]) for tokens, _ in batches(plain)]
    widths_sorted = [int(tokens.shape[1]) for tokens, _ in batches(sorted_)]
    assert sum(widths_sorted) < 0.8 * sum(widths_plain)
    # the sorted set's batches are the consecutive groups of four of the length order, in some order
    assert sorted(row_lengths(batches(sorted_))) == chunks(sorted(lengths), 4)


def test_whole_batches_are_shuffled_and_every_example_is_seen_once_per_epoch() -> None:
    lengths = lengths_of(40, seed=3)
    epoch = batches(LengthSorted(CacheDataset(Records(lengths))))
    seen = sorted(int(n) for _tokens, rows in epoch for n in rows[:, 1].tolist())
    assert seen == sorted(lengths)
    firsts = [int(rows[:, 1].tolist()[0]) for _tokens, rows in epoch]
    assert firsts != sorted(firsts)  # the batch order is shuffled, not ascending


def test_ranks_stride_within_each_sorted_batch() -> None:
    class Group:
        def __init__(self, rank: int) -> None:
            self._rank = rank

        def rank(self) -> int:
            return self._rank

        def size(self) -> int:
            return 2

    lengths = lengths_of(32, seed=5)
    shares = [batches(LengthSorted(CacheDataset(Records(lengths))), comm_group=Group(rank)) for rank in (0, 1)]
    together = [tuple(sorted(a + b)) for a, b in zip(*(row_lengths(share) for share in shares), strict=True)]
    assert sorted(together) == chunks(sorted(lengths), 4)


def test_one_tokenization_per_example_shared_with_the_wrapped_set() -> None:
    records = Records(lengths_of(16))
    plain = CacheDataset(records)
    sorted_ = LengthSorted(plain)
    batches(sorted_)
    assert records.processed == 16
    plain[3]  # already tokenized through the wrapper
    assert records.processed == 16


def test_useful_share_counts_row_tokens_against_positions() -> None:
    useful = UsefulTokens()
    assert useful.share is None
    useful.add(8, [8, 4])
    useful.add(4, [4, 4, 2, 2])
    assert (useful.tokens, useful.positions) == (24, 32)
    assert useful.share == 0.75
    lengths = lengths_of(64, seed=7)
    shares = {}
    for grouping in ("file_order", "length"):
        seen = UsefulTokens()
        for _batch in counted(batches(grouped(CacheDataset(Records(lengths)), grouping)), seen):
            pass
        shares[grouping] = seen.share
    assert shares["length"] > 0.9 and shares["file_order"] < 0.8, shares



def test_a_runs_validation_batches_are_grouped_as_its_training_batches(tmp_path: Path) -> None:
    """The validation set StepHooks hands mlx-lm's evaluate (test_batch_grouping.py: the loss stays the same)."""
    from app.contract.run_config import RunConfig
    from worker.train import StepHooks

    lengths = lengths_of(16)
    widths = {}
    for grouping in ("file_order", "length"):
        hooks = StepHooks(None, RunConfig(batch_grouping=grouping), tmp_path, None,  # type: ignore[arg-type]
                          CacheDataset(Records(lengths)), None)  # type: ignore[arg-type]
        assert isinstance(hooks.val_set, LengthSorted) == (grouping == "length")
        widths[grouping] = sum(int(tokens.shape[1]) for tokens, _ in batches(hooks.val_set))
    assert widths["length"] < 0.8 * widths["file_order"], widths
