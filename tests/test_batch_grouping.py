"""The run option batch_grouping: its default and YAML key, and a real run's useful-token share (API, run page)
with batches grouped by token length against mlx-lm's file order, on the same data; validation batches are grouped
too, and the validation loss stays what it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import PROJECT_DIR, QUICK_RUN, Server, short_example, shot
from playwright.sync_api import Page, expect

from app.contract.run_config import RunConfig
from app.runs.configs.yaml_config import export_yaml, parse_yaml_config
from app.runs.form.fields import choices


def test_the_option_defaults_to_length_and_round_trips_under_loraboard() -> None:
    assert RunConfig().batch_grouping == "length"
    assert [value for value, _label in choices("batch_grouping")] == ["length", "file_order"]
    text = export_yaml(RunConfig(model="/m", data="/d", batch_grouping="file_order"))
    assert "\n  batch_grouping: file_order\n" in text  # under loraboard:, which mlx_lm lora ignores
    assert parse_yaml_config(text).config.batch_grouping == "file_order"


def alternating_lengths(folder: Path, examples: int = 16, valid: int = 8) -> Path:
    """Sample examples whole (~220 tokens) and cut short (~75) in turn, in both splits: file order puts both in
    every batch."""
    source = PROJECT_DIR / "data" / "contact-center"
    folder.mkdir(parents=True)
    for split, count in (("train", examples), ("valid", valid)):
        lines = (source / f"{split}.jsonl").read_text().splitlines()[:count]
        rows = [json.loads(line) if n % 2 else short_example(json.loads(line)) for n, line in enumerate(lines)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


GROUPING_RUN = {**QUICK_RUN, "iters": 8, "steps_per_report": 4, "steps_per_eval": 100, "save_every": 100,
                "val_batches": -1}  # two epochs of 16 examples in batches of 4; 8 validation examples, all measured


@pytest.mark.browser
def test_length_grouping_computes_fewer_padding_positions_than_file_order(server: Server, page: Page,
                                                                            tmp_path: Path) -> None:
    data = alternating_lengths(tmp_path / "data")
    shares = {}
    ids = {}
    for grouping in ("file_order", "length"):
        status, run = server.post("/api/runs", {**GROUPING_RUN, "name": grouping, "data": str(data),
                                                "batch_grouping": grouping})
        assert status == 201, run
        ids[grouping] = run["id"]
    for grouping, run_id in ids.items():
        done = server.wait_terminal(run_id, timeout=300)
        assert done["status"] == "completed", done
        shares[grouping] = done["useful_token_share"]
        assert 0 < shares[grouping] <= 1, done
    # rows of like length share a batch: mostly tokens; file order pads every short row to a long one
    assert shares["length"] > shares["file_order"] + 0.1, shares
    # the base model's validation loss (iteration 0), on batches grouped (short with short) or in file order (short
    # with long): a mean over the same counted tokens, padding masked, so only float rounding may differ
    val_at_start = {grouping: next(v["val_loss"] for v in server.get(f"/api/runs/{run_id}/metrics")["val"]
                                   if v["iteration"] == 0) for grouping, run_id in ids.items()}
    assert val_at_start["length"] == pytest.approx(val_at_start["file_order"], rel=1e-4), val_at_start

    page.goto(server.url + f"/runs/{ids['length']}")
    card = page.locator("#summary-useful-tokens")
    expect(card).to_contain_text(f"{100 * shares['length']:.0f}%")
    expect(card).to_contain_text("of the positions computed")
    shot(page, "batch-grouping-run-page")
