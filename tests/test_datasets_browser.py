"""Datasets in real headless Chromium: upload (bad, then good), register a folder, the preview with mask_prompt."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ARTIFACTS, PROJECT_DIR, Server, shot
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser

SAMPLE = (PROJECT_DIR / "data" / "contact-center").resolve()
BAD_ROLE = {"messages": [{"role": "user", "content": "Hi"}, {"role": "agent", "content": "Hello"}]}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("datasets-browser")).start()
    yield server
    server.stop()


def sample_lines(split: str, count: int) -> str:
    return "".join((SAMPLE / f"{split}.jsonl").read_text().splitlines(True)[:count])


def test_upload_a_bad_file_then_a_good_one(srv: Server, page: Page, tmp_path: Path) -> None:
    train, valid = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    train.write_text(sample_lines("train", 40))
    valid.write_text(sample_lines("valid", 1) + json.dumps(BAD_ROLE) + "\n")

    page.goto(srv.url + "/datasets")
    expect(page.locator("#datasets-table tbody tr")).to_have_count(1)  # the sample
    expect(page.locator("#datasets-table")).to_contain_text("contact-center")
    expect(page.locator("#datasets-table .dataset-ok")).to_have_count(1)
    shot(page, "datasets-01-list")

    page.fill("#upload-name", "calls-v2")
    page.set_input_files("#upload-train", str(train))
    page.set_input_files("#upload-valid", str(valid))
    page.click("#upload-button")
    errors = page.locator("#upload-card #dataset-errors")
    expect(errors).to_contain_text(
        "valid.jsonl line 2: 'messages'[1].role must be one of system/user/assistant/tool, got 'agent'")
    expect(errors.locator("strong")).to_have_text("The upload has 2 problems:")
    expect(page.locator("#datasets-table tbody tr")).to_have_count(1)
    assert not (srv.root / "datasets" / "calls-v2").exists()
    shot(page, "datasets-02-upload-error")

    valid.write_text(sample_lines("valid", 10))
    page.fill("#upload-name", "calls-v2")
    page.set_input_files("#upload-train", str(train))
    page.set_input_files("#upload-valid", str(valid))
    page.click("#upload-button")
    page.wait_for_url("**/datasets?added=*")
    expect(page.locator("#dataset-added")).to_contain_text("calls-v2")
    expect(page.locator("#dataset-added")).to_contain_text("40 train / 10 valid / 0 test")
    row = page.locator("#datasets-table tr.row-added")
    expect(row).to_contain_text("calls-v2")
    expect(row).to_contain_text("upload")
    expect(row.locator(".dataset-ok")).to_have_text("valid")
    assert (srv.root / "datasets" / "calls-v2" / "train.jsonl").read_text() == sample_lines("train", 40)
    shot(page, "datasets-03-uploaded")


def test_register_a_folder_from_the_page(srv: Server, page: Page, tmp_path: Path) -> None:
    folder = tmp_path / "completions-set"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps({"prompt": "Summarise: the line is down.", "completion":
                                                    "Outage."}) + "\n")
    page.goto(srv.url + "/datasets")
    page.fill("#register-path", str(folder))
    page.click("#register-button")
    expect(page.locator("#register-card #dataset-errors")).to_contain_text(
        "valid.jsonl: is missing: training measures validation loss on valid.jsonl")
    expect(page.locator("#register-path")).to_have_value(str(folder))

    (folder / "valid.jsonl").write_text(json.dumps({"prompt": "Summarise: billing twice.", "completion":
                                                    "Double charge."}) + "\n")
    page.click("#register-button")
    page.wait_for_url("**/datasets?added=*")
    expect(page.locator("#datasets-table tr.row-added")).to_contain_text("completions-set")
    expect(page.locator("#datasets-table tr.row-added")).to_contain_text("completions")

    page.locator("#datasets-table tr.row-added a").click()
    expect(page.locator("#dataset-format")).to_have_text("completions")
    page.check("#preview-mask")
    expect(page.locator("#dataset-preview")).to_have_attribute("data-mask-prompt", "true")
    example = page.locator("#dataset-preview .preview-example").first
    expect(example.locator(".seg-loss")).to_have_text("Outage.</s>")
    expect(example.locator(".seg-prompt")).to_contain_text("<|user|>\nSummarise: the line is down.")


def test_dataset_page_preview_with_mask_prompt(srv: Server, page: Page) -> None:
    sample = next(d for d in srv.get("/api/datasets") if d["source"] == "sample")
    first = json.loads(sample_lines("train", 1))
    page.goto(srv.url + f"/datasets/{sample['id']}")
    expect(page.locator("#dataset-format")).to_have_text("chat")
    expect(page.locator("#count-train")).to_have_text("1,200")
    expect(page.locator("#dataset-validity")).to_have_text("valid")
    expect(page.locator("#validation-ok")).to_contain_text("1,500 examples, no errors")

    preview = page.locator("#dataset-preview")
    expect(preview).to_have_attribute("data-mask-prompt", "false")
    expect(preview.locator(".preview-example")).to_have_count(9)  # 3 per split
    expect(preview.locator("pre .seg-prompt")).to_have_count(0)  # no mask: all of it carries the loss

    page.check("#preview-mask")
    expect(preview).to_have_attribute("data-mask-prompt", "true")
    example = preview.locator(".preview-example[data-split='train'][data-line='1']")
    expect(example.locator(".seg-loss")).to_have_text(first["messages"][-1]["content"] + "</s>")
    prompt = example.locator(".seg-prompt")
    expect(prompt).to_contain_text("<|system|>\n" + first["messages"][0]["content"])
    assert prompt.inner_text().endswith("<|assistant|>\n")
    expect(preview.locator("pre .seg-prompt")).to_have_count(9)
    colors = page.evaluate("""() => ['.seg-prompt', '.seg-loss'].map(s =>
        getComputedStyle(document.querySelector('#dataset-preview pre ' + s)).backgroundColor)""")
    assert colors[0] != colors[1]
    expect(page.locator(".preview-legend .seg-loss")).to_contain_text("carries the loss")
    shot(page, "datasets-04-dataset-page-preview")
    page.locator("#preview-card").screenshot(path=str(ARTIFACTS / "datasets-05-preview-mask-prompt.png"))

    page.goto(srv.url + f"/datasets/{sample['id']}?model=/nonexistent/model")
    expect(page.locator("#preview-problem")).to_contain_text("is not a local folder nor a downloaded")


def test_nav_and_new_run_form_lead_to_the_datasets(srv: Server, page: Page) -> None:
    page.goto(srv.url + "/runs/new")
    expect(page.locator("#f-data")).to_have_value(str(PROJECT_DIR / "data" / "contact-center"))
    page.locator("#f-data").scroll_into_view_if_needed()
    shot(page, "datasets-06-new-run-data-field")
    page.click("#datasets-link")
    page.wait_for_url("**/datasets")
    page.goto(srv.url + "/")
    page.locator("nav a", has_text="Datasets").click()
    expect(page.locator("h1")).to_have_text("Datasets")
