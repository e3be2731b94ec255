"""Subset and split: the pure drawing (seeded, sized, disjoint, ratio errors), the API in-process, the page in
Chromium and a run that trains on a subset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import PROJECT_DIR, QUICK_RUN, InProcess, Server, shot
from playwright.sync_api import Page, expect

from app.datasets.subset import draw_subset, split_sizes, validate_ratios

SAMPLE = PROJECT_DIR / "data" / "contact-center"


# Unit: the drawing ---------------------------------------------------------------------------------


def test_same_seed_draws_the_same_subset_and_another_seed_does_not() -> None:
    pool = list(range(1000))
    first = draw_subset(pool, 100, seed=7, ratios=(0.8, 0.1, 0.1))
    assert draw_subset(pool, 100, seed=7, ratios=(0.8, 0.1, 0.1)) == first
    assert draw_subset(pool, 100, seed=8, ratios=(0.8, 0.1, 0.1)) != first


def test_sizes_follow_the_ratios_and_add_up_to_n() -> None:
    parts = draw_subset(list(range(500)), 200, seed=1, ratios=(0.7, 0.2, 0.1))
    assert {k: len(v) for k, v in parts.items()} == {"train": 140, "valid": 40, "test": 20}
    assert split_sizes(10, (0.8, 0.1, 0.1)) == (8, 1, 1)
    assert split_sizes(7, (0.5, 0.25, 0.25)) in {(4, 2, 1), (3, 2, 2), (4, 1, 2)}
    assert sum(split_sizes(7, (0.5, 0.25, 0.25))) == 7
    assert split_sizes(3, (0.98, 0.01, 0.01)) == (1, 1, 1)  # every split with a share gets an example
    assert split_sizes(5, (0.9, 0.1, 0.0)) == (4, 1, 0)
    for n in range(3, 60):
        sizes = split_sizes(n, (0.6, 0.3, 0.1))
        assert sum(sizes) == n and min(sizes) >= 1


def test_no_example_is_in_two_splits_and_the_order_is_shuffled() -> None:
    pool = [f"line {i}" for i in range(300)]
    parts = draw_subset(pool, 300, seed=0, ratios=(0.8, 0.1, 0.1))
    drawn = parts["train"] + parts["valid"] + parts["test"]
    assert len(drawn) == len(set(drawn)) == 300
    assert set(drawn) == set(pool)
    assert drawn != pool  # shuffled, not the source order


@pytest.mark.parametrize(("ratios", "message"), [
    ((0.8, 0.1), "ratios must be three numbers (train, valid, test), got 2"),
    ((0.8, 0.1, 0.2), "ratios must add up to 1, got 0.8 + 0.1 + 0.2 = 1.1"),
    ((1.2, -0.1, -0.1), "the train ratio must be between 0 and 1, got 1.2"),
    ((0.9, -0.1, 0.2), "the valid ratio must be between 0 and 1, got -0.1"),
    ((0.0, 0.5, 0.5), "the train ratio must be above 0"),
    ((0.5, float("nan"), 0.5), "the valid ratio must be between 0 and 1, got nan"),
])
def test_bad_ratios_are_refused_with_a_clear_error(ratios: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_ratios(ratios)
    assert message in str(info.value)


def test_n_larger_than_the_pool_or_too_small_for_the_splits_is_refused() -> None:
    with pytest.raises(ValueError, match="n = 1,001 is more than the 1,000 examples to draw from"):
        draw_subset(list(range(1000)), 1001, seed=0, ratios=(0.8, 0.1, 0.1))
    with pytest.raises(ValueError, match="n = 2 is too small: train, valid, test each need at least one example"):
        draw_subset(list(range(10)), 2, seed=0, ratios=(0.8, 0.1, 0.1))


# The API writes and registers (in-process), and a run trains on a subset (a real server and worker) ---------


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


CC_120 = {"source": str(SAMPLE), "name": "cc-120", "n": 120, "seed": 3, "ratios": [0.75, 0.125, 0.125]}


def test_api_creates_a_registered_subset(app_client: InProcess) -> None:
    server, body = app_client, CC_120
    code, answer = server.post("/api/datasets/subset", body)
    assert code == 201, answer
    folder = server.root / "datasets" / "cc-120"
    assert answer["path"] == str(folder)
    assert answer["counts"] == {"train": 90, "valid": 15, "test": 15}
    written = {split: lines(folder / f"{split}.jsonl") for split in ("train", "valid", "test")}
    assert {k: len(v) for k, v in written.items()} == answer["counts"]
    source_lines = set().union(*(lines(SAMPLE / f"{s}.jsonl") for s in ("train", "valid", "test")))
    drawn = [line for part in written.values() for line in part]
    assert len(set(drawn)) == 120 and set(drawn) <= source_lines  # copied byte for byte, no repeats
    assert sorted(p.name for p in (server.root / "datasets").iterdir()) == ["cc-120"]  # no temp folder left

    registered = {d["name"]: d for d in server.get("/api/datasets")}
    assert registered["cc-120"]["path"] == str(folder)
    assert answer["dataset_id"] == registered["cc-120"]["id"]

    # the same seed draws the same subset; an existing name is refused and nothing changes
    code, _ = server.post("/api/datasets/subset", {**body, "name": "cc-120-again"})
    assert code == 201
    assert lines(server.root / "datasets" / "cc-120-again" / "train.jsonl") == written["train"]
    code, refused = server.post("/api/datasets/subset", body)
    assert code == 422 and refused["detail"][0]["loc"] == ["body", "name"]
    assert "already exists" in refused["detail"][0]["msg"]


def test_a_run_trains_on_a_subset(server: Server) -> None:
    code, answer = server.post("/api/datasets/subset", CC_120)
    assert code == 201, answer
    folder = server.root / "datasets" / "cc-120"
    code, run = server.post("/api/runs", {**QUICK_RUN, "data": str(folder), "iters": 20, "steps_per_eval": 10,
                                          "save_every": 10})
    assert code == 201, run
    finished = server.wait_terminal(run["id"], timeout=180)
    assert finished["status"] == "completed", finished
    assert finished["config"]["data"] == str(folder)
    assert server.get(f"/api/runs/{run['id']}/metrics")["val"], "validation ran on the subset's valid split"


def test_api_refuses_bad_requests_and_leaves_nothing_behind(app_client: InProcess, tmp_path: Path) -> None:
    server = app_client
    base = {"source": str(SAMPLE), "name": "cc-bad", "n": 50, "seed": 0, "ratios": [0.8, 0.1, 0.1]}
    cases = [
        ({"ratios": [0.8, 0.3, 0.1]}, "ratios", "ratios must add up to 1"),
        ({"ratios": [0.5, 0.5]}, "ratios", "ratios must be three numbers"),
        ({"n": 100_000}, "n", "n = 100,000 is more than the 1,500 examples to draw from"),
        ({"n": 0}, "n", "greater than or equal to 1"),
        ({"name": "../escape"}, "name", "name must be"),
        ({"source": str(tmp_path / "nowhere")}, "source", "does not exist"),
        ({"splits": ["train", "dev"]}, "splits", "unknown split 'dev'"),
    ]
    for change, field, message in cases:
        code, answer = server.post("/api/datasets/subset", {**base, **change})
        assert code == 422, (change, answer)
        assert answer["detail"][0]["loc"][-1] == field or answer["detail"][0]["loc"] == ["body", field, 0], answer
        assert message in json.dumps(answer["detail"]), (change, answer)
    datasets = server.root / "datasets"
    assert not datasets.exists() or list(datasets.iterdir()) == []


# Browser: the dataset page's subset form -------------------------------------------------------------


@pytest.mark.browser
def test_subset_form_on_the_dataset_page_shows_the_counts(server: Server, page: Page) -> None:
    sample = next(d for d in server.get("/api/datasets") if d["path"] == str(SAMPLE))  # always listed
    page.goto(f"{server.url}/datasets/{sample['id']}")
    form = page.locator("#subset-form")
    expect(form).to_be_visible(timeout=30_000)
    expect(page.locator("#subset-n")).to_have_value("200")
    expect(form).to_contain_text("of 1,500")
    page.fill("#subset-name", "sample-60")
    page.fill("#subset-n", "60")
    page.fill("#subset-seed", "5")
    page.fill("#subset-ratio-train", "0.5")
    page.fill("#subset-ratio-valid", "0.5")
    page.fill("#subset-ratio-test", "0.2")
    page.click("#subset-button")
    expect(page.locator("#subset-errors")).to_contain_text("ratios must add up to 1, got 0.5 + 0.5 + 0.2 = 1.2")
    shot(page, "subset-form-error")
    page.fill("#subset-ratio-valid", "0.3")
    page.click("#subset-button")
    result = page.locator("#subset-result")
    expect(result).to_contain_text("train 30, valid 18, test 12")
    page.locator("#dataset-subset").scroll_into_view_if_needed()
    shot(page, "subset-form-created")
    result.locator("a").click()
    page.wait_for_url("**/datasets/*")
    expect(page.get_by_text("sample-60").first).to_be_visible()
