"""LTTB downsampling (pure)."""

from __future__ import annotations

import math

from app.runs.live.downsample import lttb


def test_small_series_are_kept_whole() -> None:
    assert lttb([0, 1, 2], [5, 6, 7], 10) == [0, 1, 2]
    assert lttb([], [], 10) == []


def test_keeps_the_ends_the_count_and_the_order() -> None:
    xs = list(range(10_000))
    ys = [math.sin(x / 300) for x in xs]
    kept = lttb(xs, ys, 500)
    assert len(kept) == 500 and kept[0] == 0 and kept[-1] == 9_999
    assert kept == sorted(set(kept))


def test_keeps_spikes_that_uniform_sampling_would_drop() -> None:
    xs = list(range(20_000))
    ys = [1.0] * 20_000
    ys[12_345] = 50.0  # one loss spike
    assert 12_345 in lttb(xs, ys, 200)
    assert 12_345 not in range(0, 20_000, 100)


def test_extremes_of_a_noisy_curve_survive() -> None:
    xs = list(range(5_000))
    ys = [math.exp(-x / 1_000) + 0.05 * math.sin(x * 1.7) for x in xs]
    kept = lttb(xs, ys, 300)
    picked = [ys[i] for i in kept]
    assert max(ys) - max(picked) < 0.02  # the noise envelope (±0.05) is kept
    assert min(picked) - min(ys) < 0.02
