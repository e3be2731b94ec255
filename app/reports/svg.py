"""Pure: the report's loss chart as a plain SVG document (no network, no browser, no plotting library).

Train and validation curves (one path each), checkpoint markers, the best-checkpoint marker, the shaded
overfitting stretches and the early-stop line, on axes with ticks. Built with ElementTree, so every text is
escaped.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 820, 420
LEFT, RIGHT, TOP, BOTTOM = 64, 24, 36, 52
TRAIN_COLOR, VAL_COLOR, CKPT_COLOR, BEST_COLOR = "#2563eb", "#ea580c", "#475569", "#16a34a"
SVG_NS = "http://www.w3.org/2000/svg"


@dataclass(frozen=True)
class ChartMark:
    """A checkpoint on the chart: where it was saved and the validation loss measured on it."""

    iteration: int
    val_loss: float | None
    is_best: bool = False
    is_deployment: bool = False


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2, 2.5 or 5 times a power of ten apart) from at or below low to at or
    above high."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(s * power for s in (1, 2, 2.5, 5, 10) if s * power >= raw)
    first = math.floor(low / step + 1e-9)
    last = math.ceil(high / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def tick_label(value: float) -> str:
    if value == int(value) and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:.3g}"


def _finite(points: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    return [(it, loss) for it, loss in points if math.isfinite(loss)]


def loss_chart_svg(
    train: Sequence[tuple[int, float]],
    val: Sequence[tuple[int, float]],
    checkpoints: Sequence[ChartMark] = (),
    spans: Sequence[tuple[int, int]] = (),
    early_stop: int | None = None,
    title: str = "Loss",
) -> str:
    """The chart as an SVG document (a string that starts with <svg)."""
    train, val = _finite(train), _finite(val)
    marks = [c for c in checkpoints if c.val_loss is not None and math.isfinite(c.val_loss)]
    xs = [it for it, _ in train + val] + [c.iteration for c in checkpoints] + ([early_stop] if early_stop else [])
    ys = [loss for _, loss in train + val] + [c.val_loss for c in marks if c.val_loss is not None]
    svg = ET.Element("svg", {"xmlns": SVG_NS, "width": str(WIDTH), "height": str(HEIGHT),
                             "viewBox": f"0 0 {WIDTH} {HEIGHT}", "font-family": "sans-serif", "font-size": "12",
                             "role": "img", "aria-label": title})
    ET.SubElement(svg, "rect", {"width": str(WIDTH), "height": str(HEIGHT), "fill": "#ffffff"})
    ET.SubElement(svg, "text", {"x": str(LEFT), "y": "20", "font-size": "14", "font-weight": "bold"}).text = title
    if not xs or not ys:
        ET.SubElement(svg, "text", {"x": str(WIDTH // 2), "y": str(HEIGHT // 2), "text-anchor": "middle",
                                    "fill": "#64748b"}).text = "no losses reported yet"
        return ET.tostring(svg, encoding="unicode")
    x_ticks = nice_ticks(min(xs), max(xs), 8)
    y_ticks = nice_ticks(min(ys), max(ys), 6)
    x_low, x_high = min([*xs, *x_ticks]), max([*xs, *x_ticks])
    y_low, y_high = min([*ys, *y_ticks]), max([*ys, *y_ticks])
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(iteration: float) -> float:
        return LEFT + (iteration - x_low) / ((x_high - x_low) or 1) * plot_w

    def py(loss: float) -> float:
        return TOP + plot_h - (loss - y_low) / ((y_high - y_low) or 1) * plot_h

    for start, end in spans:
        ET.SubElement(svg, "rect", {"class": "overfitting", "x": f"{px(start):.1f}", "y": str(TOP),
                                    "width": f"{max(px(end) - px(start), 1):.1f}", "height": str(plot_h),
                                    "fill": "#fee2e2"})
    axes = ET.SubElement(svg, "g", {"class": "axes", "stroke": "#cbd5e1", "fill": "#334155"})
    for value in x_ticks:
        x = f"{px(value):.1f}"
        ET.SubElement(axes, "line", {"x1": x, "x2": x, "y1": str(TOP), "y2": str(TOP + plot_h)})
        ET.SubElement(axes, "text", {"x": x, "y": str(TOP + plot_h + 16), "text-anchor": "middle",
                                     "stroke": "none"}).text = tick_label(value)
    for value in y_ticks:
        y = f"{py(value):.1f}"
        ET.SubElement(axes, "line", {"x1": str(LEFT), "x2": str(LEFT + plot_w), "y1": y, "y2": y})
        ET.SubElement(axes, "text", {"x": str(LEFT - 6), "y": y, "text-anchor": "end", "dominant-baseline": "middle",
                                     "stroke": "none"}).text = tick_label(value)
    ET.SubElement(axes, "rect", {"x": str(LEFT), "y": str(TOP), "width": str(plot_w), "height": str(plot_h),
                                 "fill": "none", "stroke": "#64748b"})
    ET.SubElement(svg, "text", {"x": str(LEFT + plot_w / 2), "y": str(HEIGHT - 12),
                                "text-anchor": "middle"}).text = "iteration"
    ET.SubElement(svg, "text", {"x": "16", "y": str(TOP + plot_h / 2), "text-anchor": "middle",
                                "transform": f"rotate(-90 16 {TOP + plot_h / 2})"}).text = "loss"
    if early_stop:
        x = f"{px(early_stop):.1f}"
        ET.SubElement(svg, "line", {"class": "early-stop", "x1": x, "x2": x, "y1": str(TOP), "y2": str(TOP + plot_h),
                                    "stroke": "#dc2626", "stroke-dasharray": "5 4"})
    for name, points, color in (("train", train, TRAIN_COLOR), ("val", val, VAL_COLOR)):
        if points:
            d = " ".join(f"{'M' if i == 0 else 'L'}{px(it):.1f},{py(loss):.1f}" for i, (it, loss) in enumerate(points))
            ET.SubElement(svg, "path", {"class": f"curve {name}", "d": d, "fill": "none", "stroke": color,
                                        "stroke-width": "2"})
    for mark in marks:
        assert mark.val_loss is not None
        attrs = {"cx": f"{px(mark.iteration):.1f}", "cy": f"{py(mark.val_loss):.1f}"}
        if mark.is_best:
            circle = ET.SubElement(svg, "circle", {**attrs, "class": "best", "r": "7", "fill": BEST_COLOR,
                                                   "stroke": "#ffffff", "stroke-width": "2"})
        else:
            circle = ET.SubElement(svg, "circle", {**attrs, "class": "checkpoint", "r": "4", "fill": CKPT_COLOR})
        words = f"checkpoint {mark.iteration:,}: val {mark.val_loss:.3f}" + (" (best)" if mark.is_best else "")
        ET.SubElement(circle, "title").text = words + (" (deployment)" if mark.is_deployment else "")
    _legend(svg, bool(spans), early_stop is not None)
    return ET.tostring(svg, encoding="unicode")


def _legend(svg: ET.Element, spans: bool, early: bool) -> None:
    entries = [("line", TRAIN_COLOR, "train loss"), ("line", VAL_COLOR, "validation loss"),
               ("dot", CKPT_COLOR, "checkpoint"), ("dot", BEST_COLOR, "best checkpoint")]
    if spans:
        entries.append(("box", "#fee2e2", "overfitting"))
    if early:
        entries.append(("line", "#dc2626", "early stop"))
    legend = ET.SubElement(svg, "g", {"class": "legend"})
    widths = [34 + 7 * len(label) for _, _, label in entries]
    x = WIDTH - RIGHT - sum(widths)
    for (kind, color, label), width in zip(entries, widths, strict=True):
        if kind == "line":
            ET.SubElement(legend, "line", {"x1": str(x), "x2": str(x + 18), "y1": "16", "y2": "16", "stroke": color,
                                           "stroke-width": "2"})
        elif kind == "dot":
            ET.SubElement(legend, "circle", {"cx": str(x + 9), "cy": "16", "r": "5", "fill": color})
        else:
            ET.SubElement(legend, "rect", {"x": str(x), "y": "10", "width": "18", "height": "12", "fill": color})
        ET.SubElement(legend, "text", {"x": str(x + 24), "y": "20"}).text = label
        x += width
