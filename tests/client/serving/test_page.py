"""The staff web page in a real headless Chromium (Debian's, driven by Playwright), against a real server.

Skipped with a reason when Chromium or Playwright is missing (``scripts/install-system-deps.sh`` installs the
browser; Playwright's own browser download is not used).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from client.ledger import PrivacyLedger

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - dev dependency missing
    pytest.skip("playwright not installed (pip install -e '.[dev]')", allow_module_level=True)
from shared.privacy.accounting import PrivacyBudget, PrivacyEvent

CHROMIUM = os.environ.get("FEDREC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: run scripts/install-system-deps.sh (apt: chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


def write_ledger(root: Path) -> float:
    budget = PrivacyBudget(epsilon_max=8.0, delta=1e-5)
    ledger = PrivacyLedger.open(root / "ledger.jsonl", "store-00", budget)
    for round_id in range(3):
        ledger.append(
            PrivacyEvent(
                round_id=round_id,
                noise_multiplier=1.1,
                sample_rate=0.05,
                steps=40,
                accountant="rdp",
                time=time.time(),
            )
        )
    return ledger.epsilon()


def test_staff_page_shows_model_privacy_and_a_customer_lookup(browser, serve, make_store, api_key, tmp_path):
    store = make_store()
    epsilon = write_ledger(store.root)
    running = serve(store, epsilon_budget=8.0)
    customer = str(store.interactions["user_id"].value_counts().index[0])
    history_titles = {store.catalog.title(store.catalog.index_of[i]) for i in store.customer_items(customer)}

    page = browser.new_page()
    page.goto(running.url + "/")
    page.fill("#api-key", "wrong-key-wrong-key")
    page.click("#connect")
    expect(page.locator("#error")).to_contain_text("401")

    page.fill("#api-key", api_key)
    page.click("#connect")
    expect(page.locator("#model-version")).to_have_text("v000001")
    assert page.text_content("#model-kind") == "transformer"
    assert page.text_content("#error") == ""
    privacy = page.text_content("#privacy")
    assert f"ε = {epsilon:.2f} of budget 8.00" in privacy and "rdp" in privacy
    assert float(page.eval_on_selector("#privacy-bar", "e => parseFloat(e.style.width)")) > 0

    page.fill("#customer-id", customer)
    page.click("#lookup")
    expect(page.locator("#recs tr")).to_have_count(10)
    expect(page.locator("#strategy")).to_have_text("model v000001")
    history_rows = page.query_selector_all("#history tr")
    assert len(history_rows) == min(20, len(store.customer_items(customer)))
    shown_history = {
        row.query_selector("td").evaluate("e => e.firstChild.textContent") for row in history_rows
    }
    assert shown_history <= history_titles
    recs = [row.query_selector("td:nth-child(2)").evaluate("e => e.firstChild.textContent") for row in
            page.query_selector_all("#recs tr")]  # fmt: skip
    assert all(title.startswith("Category") for title in recs)  # titles from the catalog, not bare ids
    assert not set(recs) & history_titles  # seen items are not recommended
    page.screenshot(path=str(tmp_path / "staff-page.png"), full_page=True)

    page.fill("#customer-id", "someone-new")
    page.click("#lookup")
    expect(page.locator("#strategy")).to_have_text("popularity fallback")
    assert "unknown customer" in page.text_content("#history")
    page.close()


def test_page_without_a_ledger_says_so(browser, serve, api_key):
    running = serve()
    page = browser.new_page()
    page.goto(running.url + "/")
    page.fill("#api-key", api_key)
    page.click("#connect")
    expect(page.locator("#model-version")).to_have_text("v000001")
    assert page.text_content("#privacy") == "no ledger yet"
    page.close()
