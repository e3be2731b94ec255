"""Tight batch padding: the policy on hand-made lengths, then mlx-lm's own batches of the sample set cut by it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import PROJECT_DIR

from app.contract.run_config import RunConfig
from app.runs.configs.yaml_config import export_yaml, parse_yaml_config
from worker.batch_padding import (
    batch_longest,
    grouped_row_length,
    mlx_lm_row_length,
    tight_applies,
    tight_row_lengths,
)

SAMPLE = PROJECT_DIR / "data" / "contact-center"


def test_fixed_length_rows_lose_mlx_lm_padding() -> None:
    # rows of 1,159 tokens: mlx-lm makes 1,185 (1,184 positions); 1,158 positions are needed, 1,160 is the next 8
    assert mlx_lm_row_length(1159, 2048) == 1185
    assert tight_row_lengths([1159] * 10, 2048) == {1185: 1161}


def test_one_tight_length_per_mlx_lm_shape_never_longer_and_always_enough() -> None:
    longest = [5, 17, 30, 31, 33, 64, 65, 100, 2047, 2048, 3000]
    table = tight_row_lengths(longest, 2048)
    assert set(table) == {mlx_lm_row_length(n, 2048) for n in longest}  # the same shapes, as many
    for n in longest:
        shape = mlx_lm_row_length(n, 2048)
        assert min(n, 2048) <= table[shape] <= shape
    assert table[33] == 33  # 30 and 31 share mlx-lm's 33: 31 tokens need 30 positions, rounded up to 32, plus one
    assert table[65] == 65 and table[97] == 65  # 64 tokens: mlx-lm's 65, 63 positions; 65: mlx-lm's 97, 64 positions
    assert table[2048] == 2048  # truncated rows keep the cap


def test_a_grouped_batch_gets_its_own_row_length_never_longer_than_mlx_lm() -> None:
    # 294 tokens: mlx-lm's 321 (the next 32 past 294, plus one); 293 positions needed, 296 the next 8, plus one
    assert grouped_row_length(mlx_lm_row_length(294, 512), 294) == 297
    assert grouped_row_length(mlx_lm_row_length(294, 512), 294, multiple=16) == 305
    assert grouped_row_length(mlx_lm_row_length(289, 512), 289) == 289  # 288 positions: a multiple of 8 already
    assert grouped_row_length(mlx_lm_row_length(700, 512), 512) == 512  # truncated rows keep the cap
    for longest in range(1, 600):
        width = mlx_lm_row_length(longest, 512)
        own = grouped_row_length(width, min(longest, 512))
        assert min(longest, 512) <= own <= width and (own == 512 or (own - 1) % 8 == 0)


def test_batch_longest_follows_mlx_lm_cuts_and_rank_shares() -> None:
    lengths = [1, 9, 3, 4, 5, 6, 2, 8, 7]
    assert batch_longest(lengths, 4) == [9, 8]  # the last, incomplete batch is dropped, as mlx-lm does
    assert batch_longest(lengths, 4, ranks=2) == [3, 9, 5, 8]  # rank r takes every other example from r


def test_tight_only_for_runs_that_read_every_example() -> None:
    assert tight_applies("tight", steps=300, batch_size=4, examples=1200)  # one epoch: mlx-lm tokenizes all anyway
    assert not tight_applies("tight", steps=299, batch_size=4, examples=1200)  # less: tokenizing all is extra work
    assert not tight_applies("mlx_lm", steps=10_000, batch_size=4, examples=1200)


def test_the_option_round_trips_and_defaults_to_tight() -> None:
    assert RunConfig().batch_padding == "tight"
    text = export_yaml(RunConfig(model="/m", data="/d", batch_padding="mlx_lm"))
    assert "\n  batch_padding: mlx_lm\n" in text  # under loraboard:, which mlx_lm lora ignores
    assert parse_yaml_config(text).config.batch_padding == "mlx_lm"


@pytest.mark.real  # mlx_lm's batches, computed
@pytest.mark.parametrize("batch_size", [4, 3])
def test_mlx_lm_batches_of_the_sample_set_are_cut_to_their_need_and_the_loss_is_the_same(
    default_model: Path, batch_size: int
) -> None:
    import mlx.core as mx
    import numpy as np
    from mlx_lm.tuner.trainer import default_loss, iterate_batches
    from mlx_lm.utils import load

    from worker.batch_padding import padded_batches
    from worker.loading import load_data

    model, tokenizer = load(str(default_model))
    train = load_data(RunConfig(model=str(default_model), data=str(SAMPLE)), tokenizer).train
    kwargs = {"dataset": train, "batch_size": batch_size, "max_seq_length": 2048, "comm_group": mx.distributed.init()}
    np.random.seed(0)  # mlx-lm shuffles the batches with numpy's global generator
    plain = list(iterate_batches(**kwargs))
    np.random.seed(0)
    epoch = len(train) // batch_size
    tight = list(padded_batches(iterate_batches(**kwargs), kwargs, "tight", epoch))
    assert len(tight) == len(plain)
    assert len({t.shape[1] for t, _ in tight}) == len({t.shape[1] for t, _ in plain})  # as many compiled shapes
    saved = 0
    for (tokens, lengths), (cut, cut_lengths) in zip(plain, tight, strict=True):
        width = cut.shape[1]
        longest = max(int(n) for _, n in lengths.tolist())
        assert longest <= width <= tokens.shape[1] and (width - 1) % 8 == 0
        assert mx.array_equal(cut, tokens[:, :width]).item() and mx.array_equal(cut_lengths, lengths).item()
        assert not mx.any(tokens[:, width:]).item()  # only padding was cut
        saved += tokens.shape[1] - width
    assert saved > 0
    for padding, steps in (("mlx_lm", epoch), ("tight", epoch - 1)):  # asked for, or a run shorter than an epoch
        np.random.seed(0)
        kept = list(padded_batches(iterate_batches(**kwargs), kwargs, padding, steps))
        assert all(a[0].shape == b[0].shape for a, b in zip(kept, plain, strict=True))  # mlx-lm's own

    for (tokens, lengths), (cut, _) in list(zip(plain, tight, strict=True))[:3]:
        loss, count = default_loss(model, tokens, lengths)
        cut_loss, cut_count = default_loss(model, cut, lengths)
        assert count.item() == cut_count.item()
        assert abs(loss.item() - cut_loss.item()) < 1e-5

    np.random.seed(0)  # grouped by length: every batch cut to its own longest row, rounded up to 8
    own = list(padded_batches(iterate_batches(**kwargs), kwargs, "tight", epoch, "length"))
    for (tokens, lengths), (cut, cut_lengths), (table_cut, _) in zip(plain, own, tight, strict=True):
        longest = max(int(n) for _, n in lengths.tolist())
        assert cut.shape[1] == grouped_row_length(tokens.shape[1], longest) <= table_cut.shape[1]
        assert mx.array_equal(cut, tokens[:, :cut.shape[1]]).item() and mx.array_equal(cut_lengths, lengths).item()
    assert sum(t.shape[1] for t, _ in own) < sum(t.shape[1] for t, _ in tight)
