"""The SIM page's "Send USSD" console in headless Chromium: a code, a menu, a reply, a close."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from .hubkit import RunFactory
from .test_status import TOKEN, status_url
from .test_status_browser import browser, expect

__all__ = ["browser"]


async def test_send_ussd_and_answer_a_menu(run: RunFactory, browser: Any) -> None:
    r = await run(modems=4, status={"listen": "127.0.0.1:0", "token": TOKEN})
    tele2 = r.bank[3]
    assert tele2.sim is not None and tele2.sim.operator == "25020"
    page = await browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(15_000)
    failed: list[str] = []  # the console's own files must load (the favicon is not ours)
    page.on("response", lambda res: failed.append(res.url) if res.status >= 400 else None)
    await page.goto(status_url(r, f"/sims/{tele2.sim.iccid}"))
    await page.fill("input[name=token]", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_selector('[data-testid="ussd-code"]')
    answer = page.locator('[data-testid="ussd-answer"]')

    await page.fill('[data-testid="ussd-code"]', "*100#")
    await page.click("#ussd-form button")
    # Playwright's expect, not wait_for_function: the page's CSP forbids evaluating strings.
    await expect(answer).to_have_text(re.compile("^Balans"))
    assert await answer.inner_text() == "Balans: 100.00 rub."
    assert await page.locator("#ussd-reply-form").is_hidden()

    await page.fill('[data-testid="ussd-code"]', "*201#")
    await page.click("#ussd-form button")
    await page.wait_for_selector("#ussd-reply-form", state="visible")
    assert "+79500000003" in await answer.inner_text()
    await page.fill('[data-testid="ussd-reply"]', "1")
    await page.click("#ussd-reply-form button[type=submit]")
    await expect(answer).to_have_text(re.compile("^Vybrano"))
    assert await page.locator("#ussd-reply-form").is_hidden()
    assert tele2.ussd.requests == ["*100#", "*201#", "1"]

    await page.fill('[data-testid="ussd-code"]', "*201#")
    await page.click("#ussd-form button")
    await page.wait_for_selector("#ussd-reply-form", state="visible")
    await page.click("#ussd-close")
    await expect(answer).to_have_text("session closed")
    assert tele2.ussd.closes == 1 and tele2.ussd.open_menu is None
    assert [url for url in failed if not url.endswith("/favicon.ico")] == []


async def test_the_sim_page_shows_the_balance_and_why_a_number_is_unknown(
    run: RunFactory, browser: Any
) -> None:
    r = await run(
        modems=1,
        status={"listen": "127.0.0.1:0", "token": TOKEN},
        networks={"25001": {"balance_ussd": "*100#"}},
        ussd={"spread": "100ms", "pace": "50ms", "low_balance": 500},
    )
    vm = r.bank[0]
    assert vm.sim is not None and r.daemon.running.upkeep is not None
    upkeep, read = r.daemon.running.upkeep, asyncio.Event()
    upkeep.subscribe(read.set)
    async with asyncio.timeout(10):
        while vm.sim.iccid not in upkeep.balances:
            read.clear()
            await read.wait()
    page = await browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(15_000)
    await page.goto(status_url(r, f"/sims/{vm.sim.iccid}"))
    await page.fill("input[name=token]", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_selector("#facts dd")
    facts = await page.locator("#facts").inner_text()
    assert "100.00 RUB (low)" in facts
    await page.goto(status_url(r, "/"))
    cell = page.locator('[data-testid="balance"]').first
    await page.wait_for_selector('[data-testid="balance"].low')
    assert (await cell.inner_text()).startswith("100.00 RUB")
