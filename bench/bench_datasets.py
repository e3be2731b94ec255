"""Dataset checking speed: every line of a large dataset, and the new-run form's check as you type.

    .venv/bin/python bench/bench_datasets.py [--examples 100000] [--repeats 5]
    .venv/bin/python bench/bench_datasets.py --smoke     # 2,000 examples, 1 repeat: checks its figures

1. Line check: `validate_dataset` over a train.jsonl of --examples chat examples (each like the
   sample data's) plus the sample valid.jsonl; median of --repeats.
2. Form check, A/B in one run: `check_form` (what /runs/new/check does on each pause in typing) on
   the same folder, with the dataset check kept in the database (A: files unchanged since the last
   check) and without it (B: the database forgets the check before each call, as if the files had
   changed). Interleaved, median of --repeats each; the ratio B/A is what keeping the check saves.

The form is checked with the benchmark's own settings: the temporary folder is an allowed data folder
(allowed_dirs), whatever the caller's environment says. Prints Markdown, writes
bench/results/bench_datasets.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlmodel import Session, delete

from app.contract.settings import Settings
from app.datasets.validation import validate_dataset
from app.db import make_engine
from app.runs.form.check import check_form
from app.tables import DatasetCheck
from bench.common import (
    DEFAULT_DATA,
    check_figures,
    ensure_defaults,
    fmt,
    machine_info,
    machine_line,
    markdown_table,
    median,
    ratio,
    write_results,
)


def make_dataset(folder: Path, sample: Path, examples: int) -> None:
    """train.jsonl with `examples` lines cycled from the sample's train.jsonl; the sample's valid.jsonl."""
    lines = [line for line in (sample / "train.jsonl").read_text().splitlines() if line.strip()]
    folder.mkdir()
    with (folder / "train.jsonl").open("w") as handle:
        for i in range(examples):
            handle.write(lines[i % len(lines)] + "\n")
    (folder / "valid.jsonl").write_text((sample / "valid.jsonl").read_text())


def timed(call: object) -> float:
    tic = time.perf_counter()
    call()  # type: ignore[operator]
    return time.perf_counter() - tic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="2,000 examples, 1 repeat, figures checked; results to "
                        "bench_datasets-smoke.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.examples, args.repeats = 2_000, 1
    ensure_defaults()
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="lb-datasets-") as tmp:
        settings = Settings(data_dir=DEFAULT_DATA.parent, allowed_dirs=tmp, allowed_data_dirs="",
                            allowed_model_dirs="")
        folder = Path(tmp) / "big"
        make_dataset(folder, DEFAULT_DATA, args.examples)
        size_mb = (folder / "train.jsonl").stat().st_size / 1e6
        line_check = [timed(lambda: validate_dataset(folder)) for _ in range(args.repeats)]
        engine = make_engine(Path(tmp) / "bench.db")
        form = {"data": str(folder), "iters": "300", "learning_rate": "1e-3"}
        kept: list[float] = []
        forgotten: list[float] = []
        with Session(engine) as session:
            check = check_form(form, session, settings)  # warm: the first check is kept
            assert "data" not in check.errors, check.errors
            for _ in range(args.repeats):
                kept.append(timed(lambda: check_form(form, session, settings)))
                session.exec(delete(DatasetCheck))  # type: ignore[call-overload]
                session.commit()
                forgotten.append(timed(lambda: check_form(form, session, settings)))
        engine.dispose()
    result = {"examples": args.examples, "train_mb": size_mb, "line_check_s": line_check,
              "form_check_kept_s": kept, "form_check_forgotten_s": forgotten, "machine": info}
    speedup = ratio(median(forgotten), median(kept))
    rows = [
        [f"every line checked ({args.examples:,} examples, {size_mb:.1f} MB)", fmt(median(line_check), 3, " s")],
        ["form check, dataset check kept (files unchanged)", fmt(median(kept), 3, " s")],
        ["form check, dataset checked again", fmt(median(forgotten), 3, " s")],
        ["ratio checked again / kept", fmt(speedup, 1, "x")],
    ]
    table = f"{markdown_table(['what', f'median of {args.repeats}'], rows)}\n\n{machine_line(info)}"
    print(table, flush=True)
    if args.smoke:
        check_figures([("every line checked", median(line_check)), ("check kept", median(kept)),
                       ("checked again |", median(forgotten)), ("ratio checked again / kept", speedup)], table)
    write_results("bench_datasets", result, smoke=args.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())
