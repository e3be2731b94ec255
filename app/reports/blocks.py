"""The report as a small document model (sections of paragraphs, fact lists, tables and commands) that
app/reports/markdown.py writes as Markdown and templates/report.html as HTML: one wording, two renderings."""

from __future__ import annotations

from dataclasses import dataclass, field

DASH = "—"  # a number that is missing


@dataclass(frozen=True)
class Mono:
    """A path, file name, key or command inside a sentence (code in Markdown and HTML)."""

    text: str
    kind: str = "mono"


@dataclass(frozen=True)
class Strong:
    text: str
    kind: str = "strong"


Inline = str | Mono | Strong
Text = tuple[Inline, ...]


def text(*parts: Inline | None) -> Text:
    return tuple(part for part in parts if part is not None and part != "")


@dataclass(frozen=True)
class Para:
    text: Text
    kind: str = "para"


@dataclass(frozen=True)
class FactList:
    """Bullets of "label: value"."""

    items: list[tuple[str, Text]]
    kind: str = "facts"


@dataclass(frozen=True)
class Table:
    key: str  # the HTML table's id (report-<key>)
    headers: list[str]
    rows: list[list[Text]]
    strong: list[bool] = field(default_factory=list)  # rows to emphasise (the best, the deployment)
    kind: str = "table"


@dataclass(frozen=True)
class Command:
    label: str
    command: str
    kind: str = "command"


@dataclass(frozen=True)
class Chart:
    """The loss chart: an SVG image in the Markdown, the interactive chart in the HTML."""

    kind: str = "chart"


Block = Para | FactList | Table | Command | Chart


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    blocks: list[Block]


@dataclass(frozen=True)
class Report:
    title: str
    header: list[tuple[str, Text]]
    sections: list[Section]
    footer: Text = ()
