"""The web page at `/`, driven by a real browser (Playwright, Debian's chromium) against a real
gateway, Redis and worker (ResNet-50 with random:0 weights: real predictions whose results say
their labels mean nothing). The page takes a key, submits two URLs served on loopback and one
uploaded file through the public API, and shows each image's top 5 as bars as results arrive
over GET /v1/events, with the queue's depth; a wrong key gets a message. The screenshots
(/tmp/gateway-page.png, and at a phone's width /tmp/gateway-page-phone.png) are for a person
to look at."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from tests.support.gateway import Gateway, make_key
from tests.support.paths import SAMPLES
from tests.support.workers import WorkerFactory

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = Path("/tmp/gateway-page.png")
PHONE_SCREENSHOT = Path("/tmp/gateway-page-phone.png")
RESULT_S = 90_000  # ms: a CPU worker classifying three images, with a cold start

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} is missing (scripts/test.sh installs it)"
)


@pytest.fixture(scope="module")
def gateway(
    workers: WorkerFactory, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    workers.start(MODEL_WEIGHTS="random:0")
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    gateway = Gateway(redis_url, log).wait_ready()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def test_the_page_classifies_urls_and_files_and_shows_top_5_bars(
    gateway: Gateway, browser: Browser, redis_url: str, http_base: str
) -> None:
    key = make_key(redis_url, "webpage")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems: list[str] = []  # console errors: a CSP refusal, a script error
    refused = "the server responded with a status of 401"  # the wrong key's, logged by chromium
    page.on(
        "console",
        lambda m: problems.append(m.text) if m.type == "error" and refused not in m.text else None,
    )
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(gateway.url + "/")
    expect(page).to_have_title(re.compile("imgqueue"))

    # A wrong key is refused, saying so.
    page.get_by_label("Your API key").fill("iq_" + "w" * 43)
    page.get_by_role("button", name="Use key").click()
    status = page.locator("#key-status")
    expect(status).to_contain_text("refused", timeout=10_000)
    expect(status).to_contain_text("unknown or revoked")
    expect(page.locator("#depth")).to_contain_text("unknown or revoked")

    page.get_by_label("Your API key").fill(key)
    page.get_by_role("button", name="Use key").click()
    expect(status).to_contain_text("Key accepted", timeout=10_000)
    expect(page.locator("#stream-status")).to_have_text("Live", timeout=10_000)
    expect(page.locator("#depth")).to_have_text(re.compile(r"^Queue celery: \d+ waiting$"))

    urls = [f"{http_base}/cat.jpg", f"{http_base}/coffee.jpg"]
    page.get_by_label("Image URLs, one per line").fill("\n".join(urls) + "\n")
    page.locator("#files").set_input_files(str(SAMPLES / "rocket.jpg"))
    expect(page.locator("#drop-hint")).to_contain_text("rocket.jpg")
    page.get_by_role("button", name="Classify").click()

    cards = page.locator("#results .card")
    expect(cards).to_have_count(3, timeout=10_000)
    for name in ("cat.jpg", "coffee.jpg", "rocket.jpg"):
        card = cards.filter(has=page.locator(".source", has_text=name))
        expect(card).to_have_count(1)
        bars = card.locator(".bars li")
        expect(bars).to_have_count(5, timeout=RESULT_S)
        for i in range(5):
            expect(bars.nth(i).locator(".label")).not_to_be_empty()
            expect(bars.nth(i).locator(".prob")).to_have_text(re.compile(r"^\d+\.\d+%$"))
        # Random weights: the result's warning is shown, and the labels are not called real.
        expect(card.locator(".warning")).to_be_visible()
        expect(card.locator(".warning")).to_contain_text("random weights")
        expect(card.locator(".state")).to_contain_text("NOT real")
        expect(card.locator(".model")).to_contain_text("weights random:0")
        expect(card).to_have_attribute("data-state", "SUCCESS")
        expect(card.locator("img")).to_have_js_property("complete", True)
    expect(page.locator("#progress")).to_have_text("3 of 3 done")
    expect(page.locator("#depth")).to_have_text(re.compile(r"^Queue celery: \d+ waiting$"))
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    page.set_viewport_size({"width": 390, "height": 844})
    expect(cards.first.locator(".bars li")).to_have_count(5)
    # At a phone's width nothing is wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(PHONE_SCREENSHOT), full_page=True)

    # The key is kept for the tab (sessionStorage): a reload goes on with it.
    page.reload()
    expect(status).to_contain_text("Key accepted", timeout=10_000)
    expect(page.locator("#stream-status")).to_have_text("Live", timeout=10_000)
    assert problems == []
    context.close()
