"""Largest-Triangle-Three-Buckets downsampling: keeps a curve's shape in a fixed number of points."""

from __future__ import annotations

from collections.abc import Sequence


def lttb(xs: Sequence[float], ys: Sequence[float], threshold: int) -> list[int]:
    """Indices of the points to keep (always the first and the last), in order.

    Sveinn Steinarsson's algorithm: the points are split into threshold-2 buckets and from
    each bucket the point forming the largest triangle with the previously kept point and
    the average of the next bucket is kept.
    """
    n = len(xs)
    if threshold >= n or threshold < 3:
        return list(range(n))
    keep = [0]
    every = (n - 2) / (threshold - 2)
    a = 0
    for i in range(threshold - 2):
        start = int(i * every) + 1
        end = int((i + 1) * every) + 1
        next_start, next_end = end, min(int((i + 2) * every) + 1, n)
        count = next_end - next_start
        avg_x = sum(xs[next_start:next_end]) / count
        avg_y = sum(ys[next_start:next_end]) / count
        ax, ay = xs[a], ys[a]
        best, best_area = start, -1.0
        for j in range(start, end):
            area = abs((ax - avg_x) * (ys[j] - ay) - (ax - xs[j]) * (avg_y - ay))
            if area > best_area:
                best, best_area = j, area
        keep.append(best)
        a = best
    keep.append(n - 1)
    return keep
