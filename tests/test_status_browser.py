"""The status page in headless Chromium (Debian's, driven by Playwright).

Set SUPPLIER_SCREENSHOTS=docs to write the README's screenshots there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from modems.events import SimLost

from .hubkit import RunFactory, Running
from .test_banks_rotation import Factory, bench  # noqa: F401 - the fixture
from .test_banks_status import banks_with_sessions
from .test_status import TOKEN, status_url

playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# As root in a closed network: no sandbox, and none of Chromium's own background traffic.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def browser() -> Any:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs Debian's chromium")
        pytest.skip("no chromium here (apt-get install chromium)")
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def traffic(r: Running) -> None:
    """Some history to show: sold and cancelled activations, SMS, one SIM out of sale."""
    for service, status in (("vk", 3), ("tg", 4), ("wa", 3)):
        answer = await r.call(
            "alpha",
            {
                "action": "GET_NUMBER",
                "country": "russia",
                "operator": "any",
                "service": service,
                "sum": "12.5",
                "currency": 643,
            },
        )
        assert answer["status"] == "SUCCESS", answer
        modem = next(m for m in r.bank if m.sim and m.sim.number == str(answer["number"]))
        modem.deliver(f"Your {service} code: 48213", service.upper())
        await r.hubs["alpha"].wait_for(len(r.hubs["alpha"].received) + 1)
        await r.call(
            "alpha",
            {
                "action": "FINISH_ACTIVATION",
                "activationId": answer["activationId"],
                "status": status,
            },
        )
    await r.number("alpha", "any", "vk")  # one left open


async def test_the_page_shows_the_sims_follows_an_unplug_and_filters(
    run: RunFactory, browser: Any, tmp_path: Path
) -> None:
    r = await run(modems=8, status={"listen": "127.0.0.1:0", "token": TOKEN})
    await traffic(r)
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(15_000)
    # The pages work under their own Content-Security-Policy: nothing refused, no script error.
    problems: list[str] = []
    page.on("console", lambda m: m.type == "error" and problems.append(m.text))
    page.on("pageerror", lambda e: problems.append(str(e)))
    await page.goto(status_url(r, "/?refresh=1"))
    # The token is asked for first, then the page comes back.
    await page.fill("input[name=token]", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_selector("#sims tbody tr[data-iccid]")
    rows = page.locator("#sims tbody tr")
    assert await rows.count() == 8
    shown = set(
        await page.locator("#sims tbody tr").evaluate_all("rs => rs.map(r => r.dataset.iccid)")
    )
    assert shown == {m.sim.iccid for m in r.bank if m.sim}
    # One activation is open: 7 on sale, 1 held, and each card counts what its filter shows.
    assert await page.locator('[data-testid="total-ready"] .n').inner_text() == "7"
    assert await page.locator('[data-testid="total-active"] .n').inner_text() == "1"
    for card in ("ready", "active"):
        await page.click(f'[data-testid="total-{card}"]')
        assert await page.locator('[data-testid="state"]').input_value() == card
        shown = await page.locator("#sims tbody tr").count()
        assert str(shown) == await page.locator(f'[data-testid="total-{card}"] .n').inner_text()
    await page.select_option('[data-testid="state"]', "")

    # Unplugged in the emulator: gone within one refresh of the daemon knowing.
    gone = r.bank[5]
    assert gone.sim is not None
    iccid = gone.sim.iccid
    gone.unplug()
    await r.until(lambda: any(isinstance(e, SimLost) and e.iccid == iccid for e in r.events))
    # The page refreshes every second: the row shows it within a few seconds. (Waits go
    # through Playwright's expect: wait_for_function evaluates a string, which the page's
    # Content-Security-Policy forbids, as it should.)
    await expect(page.locator(f'tr[data-iccid="{iccid}"]')).to_have_attribute(
        "data-state", "gone", timeout=5000
    )
    assert await page.locator('[data-testid="total-gone"] .n').inner_text() == "1"

    # The filter: a number picks out one SIM; the state filter picks out the gone one.
    other = r.bank[2].sim
    assert other is not None and other.number is not None
    await page.fill('[data-testid="filter"]', other.number[-6:])
    await expect(rows).to_have_count(1)
    assert await rows.first.get_attribute("data-iccid") == other.iccid
    await page.fill('[data-testid="filter"]', "")
    await page.select_option('[data-testid="state"]', "gone")
    await expect(rows).to_have_count(1)
    assert await rows.first.get_attribute("data-iccid") == iccid
    await page.select_option('[data-testid="state"]', "")
    await page.check('[data-testid="idle"]')  # earned nothing in 7 days: 8 minus the 2 sold
    await expect(rows).to_have_count(6)
    await page.uncheck('[data-testid="idle"]')

    # Sorting by number puts them in order.
    await page.click('th[data-key="number"]')
    numbers = await page.locator("#sims tbody tr td:nth-child(3)").all_inner_texts()
    # A port row without a SIM (the unplugged modem before the rescan drops its port)
    # has no number: the numbers there are, are in order.
    numbers = [n for n in numbers if n]
    assert len(numbers) >= 7 and numbers == sorted(numbers, key=lambda n: int(n.lstrip("+")))

    # One SIM's page shows its SMS texts (behind the token).
    sold = next(
        m
        for m in r.bank
        if m.sim and m.sim.number == r.hubs["alpha"].received[0]["phone"].__str__()
    )
    await page.goto(status_url(r, f"/sims/{sold.sim.iccid}"))  # type: ignore[union-attr]
    await page.wait_for_selector("#sms tbody tr td.text")
    assert "code: 48213" in await page.locator("#sms tbody").inner_text()

    await check_sim_page(page)

    out = Path(os.environ.get("SUPPLIER_SCREENSHOTS") or tmp_path)
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    await page.screenshot(path=str(out / "status-sim.png"), full_page=True)
    await page.goto(status_url(r, "/?refresh=1"))
    await page.wait_for_selector("#sims tbody tr[data-iccid]")
    await page.screenshot(path=str(out / "status-desktop.png"), full_page=True)
    phone = await browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    await phone.context.add_cookies(await page.context.cookies())
    await phone.goto(status_url(r, "/?refresh=1"))
    await phone.wait_for_selector("#sims tbody tr[data-iccid]")
    # On a phone each SIM is a card: no sideways scrolling.
    width = await phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390
    await phone.screenshot(
        path=str(out / "status-phone.png"),
        full_page=True,
        clip={"x": 0, "y": 0, "width": 390, "height": 1300},
    )
    # The SIM page on a phone: no sideways scrolling, the number field readable.
    await phone.goto(status_url(r, f"/sims/{sold.sim.iccid}"))  # type: ignore[union-attr]
    await phone.wait_for_selector("#sms tbody tr td.text")
    assert await phone.evaluate("document.documentElement.scrollWidth") <= 390
    await check_sim_page(phone)
    await phone.screenshot(path=str(out / "status-sim-phone.png"), full_page=True)
    assert (out / "status-desktop.png").stat().st_size > 10_000
    # The login page's 401 for the wrong-token case is not a page problem; nothing else is allowed.
    assert not [p for p in problems if "401" not in p], problems


async def check_sim_page(page: Any) -> None:
    """What looked wrong before: a cut-off placeholder, an actions card of empty space."""
    # The placeholder fits in its field (measured in the page's own font).
    room = await page.locator("#number").evaluate(
        """el => {
            const style = getComputedStyle(el);
            const ctx = document.createElement("canvas").getContext("2d");
            ctx.font = style.font;
            const inner = el.clientWidth - parseFloat(style.paddingLeft)
                - parseFloat(style.paddingRight);
            return inner - ctx.measureText(el.placeholder).width;
        }"""
    )
    assert room >= 0, f"the placeholder is {-room:.0f} px too wide"
    # The actions card ends near its last line: no tall blank box beside the facts.
    gap = await page.locator("#actions-card").evaluate(
        """card => {
            const shown = [...card.children].filter(c => c.offsetParent !== null);
            const last = shown[shown.length - 1].getBoundingClientRect().bottom;
            return card.getBoundingClientRect().bottom - last;
        }"""
    )
    assert gap < 40, f"{gap:.0f} px of empty space under the operator actions"
    # Every action says what it does.
    assert await page.locator("#actions-card .action p").count() == 3


async def test_the_banks_grid_goes_to_the_login_form_when_the_session_runs_out(
    bench: Factory,  # noqa: F811
    browser: Any,
) -> None:
    """As the SIM pages do: no "HTTP 401" left on screen; after the login, the grid again."""
    running, clock, runner, url = await banks_with_sessions(bench, TOKEN)
    page = await browser.new_page()
    page.set_default_timeout(15_000)
    problems: list[str] = []
    page.on("console", lambda m: m.type == "error" and problems.append(m.text))
    page.on("pageerror", lambda e: problems.append(str(e)))

    def login(address: str) -> bool:
        """The login form, asked to come back to the grid (server and script encode it apart)."""
        where = urlsplit(address)
        return where.path == "/login" and parse_qs(where.query)["next"] == ["/banks?refresh=1"]

    try:
        await page.goto(f"{url}/banks?refresh=1")
        await page.wait_for_url(login)
        await page.fill("input[name=token]", TOKEN)
        await page.click("button[type=submit]")
        await expect(page).to_have_url(f"{url}/banks?refresh=1")
        await expect(page.locator('[data-testid="bank-pool1"]')).to_be_visible()
        # The session runs out while the grid is open: its next refresh (1 s) goes to the form.
        clock.advance(3601)
        await page.wait_for_url(login, timeout=5000)
        await page.fill("input[name=token]", TOKEN)
        await page.click("button[type=submit]")
        await expect(page.locator('[data-testid="bank-pool1"]')).to_be_visible()
        # An action with an expired session goes there too (not an alert with the 401).
        clock.advance(3601)
        page.on("dialog", lambda d: problems.append(f"alert: {d.message}"))
        await page.locator("button", has_text="hold").click()
        await page.wait_for_url(login, timeout=5000)
        assert running.rotation.module("pool1", 1).row.held is False
    finally:
        await page.close()
        await runner.cleanup()
    assert not [p for p in problems if "401" not in p], problems
