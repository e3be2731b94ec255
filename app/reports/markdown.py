"""Pure: the report document (app/reports/blocks.py) as Markdown, self-contained (the chart is an SVG data URI).

Text that comes from users or the disk (run name, notes, paths) is escaped: Markdown's special characters get a
backslash, newlines become spaces, and a table cell's pipes are escaped, so no value can break a table or add
markup.
"""

from __future__ import annotations

import base64
import re

from app.reports.blocks import Block, Chart, Command, FactList, Inline, Mono, Para, Report, Strong, Table, Text

SPECIAL = re.compile(r"([\\`*_\[\]<>|])")


def escape(value: str) -> str:
    """Plain text for Markdown: one line (runs of whitespace become one space), special characters backslashed."""
    return SPECIAL.sub(r"\\\1", re.sub(r"\s+", " ", value))


def code_span(value: str, in_table: bool = False) -> str:
    value = re.sub(r"\s+", " ", value)
    if in_table:
        value = value.replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", value)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def inline(part: Inline, in_table: bool = False) -> str:
    if isinstance(part, Mono):
        return code_span(part.text, in_table)
    if isinstance(part, Strong):
        return f"**{escape(part.text)}**" if part.text.strip() else ""
    return escape(part)


def line(value: Text, in_table: bool = False) -> str:
    return "".join(inline(part, in_table) for part in value)


def table(block: Table) -> list[str]:
    out = ["| " + " | ".join(escape(h) for h in block.headers) + " |",
           "|" + "|".join("---" for _ in block.headers) + "|"]
    for index, row in enumerate(block.rows):
        strong = index < len(block.strong) and block.strong[index]
        cells = [line(cell, in_table=True) for cell in row]
        if strong:
            cells = [f"**{cell}**" if cell else cell for cell in cells]
        out.append("| " + " | ".join(cells) + " |")
    return out


def fenced(command: str) -> list[str]:
    longest = max((len(run) for run in re.findall(r"`+", command)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}bash", command, fence]


def chart_image(svg: str) -> str:
    encoded = base64.b64encode(svg.encode()).decode("ascii")
    return f"![Loss chart: train and validation loss](data:image/svg+xml;base64,{encoded})"


def block_lines(block: Block, svg: str) -> list[str]:
    if isinstance(block, Para):
        return [line(block.text)]
    if isinstance(block, FactList):
        return [f"- **{escape(label)}**: {line(value)}" for label, value in block.items]
    if isinstance(block, Table):
        return table(block)
    if isinstance(block, Command):
        return [f"**{escape(block.label)}**", "", *fenced(block.command)]
    if isinstance(block, Chart):
        return [chart_image(svg)]
    raise TypeError(f"unknown block {block!r}")


def render_markdown(report: Report, svg: str) -> str:
    out = [f"# {escape(report.title)}", ""]
    out += [f"**{escape(label)}**: {line(value)}  " for label, value in report.header]
    for section in report.sections:
        out += ["", "---", "", f"## {escape(section.title)}", ""]
        for index, block in enumerate(section.blocks):
            if index:
                out.append("")
            out += block_lines(block, svg)
    if report.footer:
        out += ["", "---", "", f"*{line(report.footer)}*"]
    return "\n".join(out) + "\n"
