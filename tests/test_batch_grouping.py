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


@pytest.mark.browser
def test_a_finished_run_records_its_speed_and_times_the_next_runs_estimate(server: Server, page: Page,
                                                                           tmp_path: Path) -> None:
    data = alternating_lengths(tmp_path / "data")
    status, stats = server.post("/api/token-stats", {"data": str(data)})
    assert status == 201, stats
    server.poll(f"/api/token-stats/{stats['id']}", lambda job: job["status"] == "completed", what="token statistics")

    status, first = server.post("/api/runs", {**GROUPING_RUN, "name": "calibrates", "data": str(data)})
    assert status == 201, first
    assert first["estimate"]["wall_s"] is None, first["estimate"]
    assert first["estimate"]["basis"] == "no earlier run on this machine to time it by"
    assert 0.5 < first["estimate"]["useful_token_share"] <= 1
    done = server.wait_terminal(first["id"], timeout=300)
    assert done["status"] == "completed", done
    speed = done["estimate"]
    assert speed["positions_per_s"] > 0 and speed["train_positions"] > 0 and speed["train_seconds"] > 0, speed
    assert speed["position_params_per_s"] == pytest.approx(speed["positions_per_s"] * done["total_params"])
    # the worker's own count of the batches it trained on, and the estimate of it before the start
    assert done["estimate"]["useful_token_share"] == pytest.approx(done["useful_token_share"], abs=0.03)

    status, second = server.post("/api/runs", {**GROUPING_RUN, "iters": 16, "name": "estimated", "data": str(data),
                                               "batch_grouping": "file_order"})
    assert status == 201, second
    estimate = second["estimate"]
    assert estimate["wall_s"] > 0 and estimate["basis"].startswith(f"by run {first['id']}'s speed: "), estimate
    done = server.wait_terminal(second["id"], timeout=300)
    assert done["status"] == "completed", done
    ratio = done["estimate"]["wall_ratio"]
    assert ratio == pytest.approx(done["estimate"]["measured_wall_s"] / estimate["wall_s"])
    assert 0.5 < ratio < 2.0, done["estimate"]  # a busy shared machine: a sane factor, not the bench's ±15%

    page.goto(server.url + f"/runs/{second['id']}")
    expect(page.locator("#summary-estimated-wall")).to_contain_text(f"by run {first['id']}'s speed")
    page.goto(server.url + f"/runs/new?from_run={second['id']}")
    panel = page.locator("#model-duration")
    expect(panel).to_contain_text("of computed positions (file order)", timeout=20_000)
    expect(panel.locator("#duration-wall")).to_contain_text(f"(by run {second['id']}'s speed:")  # the newest
    panel.scroll_into_view_if_needed()
    shot(page, "duration-estimate-panel")
