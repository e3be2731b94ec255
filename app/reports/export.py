"""Pure: a run's metrics as rows for CSV and JSON export: one row per report, train and validation alike."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any

from app.runs.store.runs import TRAIN_FIELDS

COLUMNS = ("kind", *TRAIN_FIELDS, "val_loss")  # the API's metric names, plus kind: "train" or "val"


def metric_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """metrics_json's train and val points as rows with every column (None where a kind has no such field),
    ordered by iteration, a train report before a validation at the same iteration."""
    rows = [{**dict.fromkeys(COLUMNS), **{f: p.get(f) for f in TRAIN_FIELDS}, "kind": "train"}
            for p in metrics["train"]]
    rows += [{**dict.fromkeys(COLUMNS), "kind": "val", "iteration": p["iteration"], "val_loss": p["val_loss"]}
             for p in metrics["val"]]
    rows.sort(key=lambda row: (row["iteration"], row["kind"] != "train"))
    return rows


def csv_lines(rows: Iterable[dict[str, Any]], chunk: int = 500) -> Iterator[str]:
    """The CSV text in pieces of `chunk` rows (a header first; None is an empty cell)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for count, row in enumerate(rows, start=1):
        writer.writerow(["" if row[c] is None else row[c] for c in COLUMNS])
        if count % chunk == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
