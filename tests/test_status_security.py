"""The status route's defences, over real HTTP on loopback.

Open redirects after the login, sessions that expire and that logout revokes,
wrong tokens rate-limited across requests, security headers on every answer,
and DNS rebinding refused when no token is set.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from supplier.status import (
    FailureLimiter,
    Sessions,
    create_status_app,
    safe_next,
)

from .hubkit import Clock, RunFactory
from .test_status import TOKEN, status_url

STATIC = Path(__file__).resolve().parents[1] / "supplier" / "static"


def jar() -> aiohttp.CookieJar:
    return aiohttp.CookieJar(unsafe=True)  # browsers keep cookies from IP addresses too


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/",
        "/\t/evil.example",  # yarl drops the tab: //evil.example
        "/\n/evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "https://evil.example/",
        "http:evil.example",
        "///evil.example",
        " //evil.example",
        "javascript:alert(1)",
        "evil.example",
        "/%0a/x\x7f",
    ],
)
async def test_login_never_redirects_off_site(run: RunFactory, target: str) -> None:
    r = await run(modems=1, status={"listen": "127.0.0.1:0", "token": TOKEN})
    async with (
        aiohttp.ClientSession(cookie_jar=jar()) as session,
        session.post(
            status_url(r, "/login"), data={"token": TOKEN, "next": target}, allow_redirects=False
        ) as response,
    ):
        assert response.status == 303
        assert response.headers["Location"] == "/"


def test_same_site_paths_are_kept() -> None:
    assert safe_next("/sims/8970101?x=1") == "/sims/8970101?x=1"
    assert safe_next("/?refresh=1") == "/?refresh=1"
    assert safe_next("/\t/evil.example") == "/"
    assert safe_next(None) == "/"


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_a_session_expires_and_logout_revokes_it_on_the_server(run: RunFactory) -> None:
    r = await run(modems=1)
    clock = Clock(1000.0)
    app = create_status_app(
        r.daemon.running.view, r.daemon.metrics, TOKEN, sessions=Sessions(ttl=3600, clock=clock)
    )
    runner, url = await serve(app)
    try:
        async with aiohttp.ClientSession(cookie_jar=jar()) as browser:
            async with browser.post(
                f"{url}/login", data={"token": TOKEN, "next": "/"}, allow_redirects=False
            ) as response:
                assert response.status == 303
                cookie = response.cookies["supplier_session"]
                value = cookie.value
                assert int(cookie["max-age"]) == 12 * 3600
            # Two logins get two different values: a session, not a fixed digest of the token.
            async with (
                aiohttp.ClientSession(cookie_jar=jar()) as other,
                other.post(
                    f"{url}/login", data={"token": TOKEN}, allow_redirects=False
                ) as response,
            ):
                assert response.cookies["supplier_session"].value != value
            async with browser.get(f"{url}/api/sims") as response:
                assert response.status == 200

            # A copy of the cookie (say, stolen) stops working once the operator logs out.
            headers = {"Cookie": f"supplier_session={value}"}
            async with browser.post(f"{url}/logout", allow_redirects=False) as response:
                assert response.status == 303
            async with (
                aiohttp.ClientSession() as thief,
                thief.get(f"{url}/api/sims", headers=headers) as response,
            ):
                assert response.status == 401

            # A session nobody logs out of runs out after its lifetime.
            async with browser.post(
                f"{url}/login", data={"token": TOKEN}, allow_redirects=False
            ) as response:
                assert response.status == 303
            clock.advance(3599)
            async with browser.get(f"{url}/api/sims") as response:
                assert response.status == 200
            clock.advance(2)
            async with browser.get(f"{url}/api/sims") as response:
                assert response.status == 401
    finally:
        await runner.cleanup()


async def test_wrong_tokens_are_rate_limited_across_requests(run: RunFactory) -> None:
    r = await run(modems=1)
    clock = Clock(1000.0)
    limiter = FailureLimiter(limit=10, window=60, clock=clock)
    app = create_status_app(r.daemon.running.view, r.daemon.metrics, TOKEN, limiter=limiter)
    runner, url = await serve(app)
    try:
        async with aiohttp.ClientSession(cookie_jar=jar()) as session:
            # An operator logged in before the attack keeps working through it.
            async with session.post(
                f"{url}/login", data={"token": TOKEN}, allow_redirects=False
            ) as response:
                assert response.status == 303
            cookies = {"supplier_session": response.cookies["supplier_session"].value}

            async def guess(i: int) -> int:
                async with (
                    aiohttp.ClientSession() as s,
                    s.get(
                        f"{url}/api/sims", headers={"Authorization": f"Bearer guess-{i:06d}"}
                    ) as answer,
                ):
                    return answer.status

            # 200 guesses at once: only the first 10 are even compared.
            statuses = await asyncio.gather(*(guess(i) for i in range(200)))
            assert statuses.count(401) == 10 and statuses.count(429) == 190

            async with aiohttp.ClientSession() as s:
                # The right token from the limited address waits too (it is not checked).
                async with s.get(
                    f"{url}/api/sims", headers={"Authorization": f"Bearer {TOKEN}"}
                ) as answer:
                    assert answer.status == 429
                    assert 1 <= int(answer.headers["Retry-After"]) <= 60
                # The login form shares the count.
                async with s.post(
                    f"{url}/login", data={"token": TOKEN}, allow_redirects=False
                ) as answer:
                    assert answer.status == 429
            async with (
                aiohttp.ClientSession(cookies=cookies) as s,
                s.get(f"{url}/api/sims") as answer,
            ):
                assert answer.status == 200

            clock.advance(61)  # the window has passed
            async with aiohttp.ClientSession() as s:
                async with s.get(
                    f"{url}/api/sims", headers={"Authorization": f"Bearer {TOKEN}"}
                ) as answer:
                    assert answer.status == 200
                for _ in range(10):
                    async with s.post(
                        f"{url}/login", data={"token": "wrong"}, allow_redirects=False
                    ) as answer:
                        assert answer.status == 401
                async with s.post(
                    f"{url}/login", data={"token": TOKEN}, allow_redirects=False
                ) as answer:
                    assert answer.status == 429  # wrong logins count as well
    finally:
        await runner.cleanup()


CSP_PARTS = ("script-src 'self'", "frame-ancestors 'none'")


@pytest.mark.parametrize("with_token", [True, False])
async def test_security_headers_on_every_answer(run: RunFactory, with_token: bool) -> None:
    status = {"listen": "127.0.0.1:0", "token": TOKEN} if with_token else {"listen": "127.0.0.1:0"}
    r = await run(modems=1, status=status)
    iccid = r.bank[0].sim.iccid  # type: ignore[union-attr]
    headers = {"Authorization": f"Bearer {TOKEN}"} if with_token else {}
    paths = [
        "/",
        "/login",
        "/style.css",
        "/index.js",
        f"/sims/{iccid}",
        "/api/status",
        "/api/sims",
        f"/api/sims/{iccid}",
        "/api/sims/0000",
        "/metrics",
        "/nowhere",
    ]
    async with aiohttp.ClientSession() as session:
        for auth in (headers, {}):
            for path in paths:
                async with session.get(
                    status_url(r, path), headers=auth, allow_redirects=False
                ) as response:
                    h = response.headers
                    csp = h["Content-Security-Policy"]
                    assert all(part in csp for part in CSP_PARTS), (path, csp)
                    assert "unsafe-inline" not in csp
                    assert h["X-Frame-Options"] == "DENY"
                    assert h["Referrer-Policy"] == "no-referrer"
                    static = path in ("/style.css", "/index.js") and response.status == 200
                    assert h["Cache-Control"] == ("no-cache" if static else "no-store"), path


def test_the_pages_have_no_inline_script_or_style() -> None:
    for page in STATIC.glob("*.html"):
        html = page.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), page.name
        assert not re.search(r"\son\w+=", html), page.name  # onclick= and friends
        assert " style=" not in html, page.name


async def test_without_a_token_only_the_listen_address_or_localhost_is_answered(
    run: RunFactory,
) -> None:
    r = await run(modems=1)
    assert r.daemon.running.status_listening is not None
    port = r.daemon.running.status_listening[1]
    async with aiohttp.ClientSession() as session:
        for host, expected in (
            (f"127.0.0.1:{port}", 200),
            (f"localhost:{port}", 200),
            (f"LOCALHOST.:{port}", 200),
            (f"[::1]:{port}", 200),
            (f"evil.example:{port}", 421),  # a name that rebinds to 127.0.0.1
            ("evil.example", 421),
            (f"10.1.2.3:{port}", 421),
            ("[::1", 421),  # not even a host name
            ("", 421),
        ):
            async with session.get(status_url(r, "/api/sims"), headers={"Host": host}) as response:
                assert response.status == expected, host
                if expected == 421:
                    assert (await response.json())["status"] == "ERROR"


def test_guessing_from_many_addresses_is_limited_too() -> None:
    clock = Clock(0.0)
    limiter = FailureLimiter(limit=10, window=60, limit_all=100, clock=clock)
    for i in range(100):
        assert limiter.retry_after(f"10.0.{i // 250}.{i % 250}") is None
        limiter.failed(f"10.0.{i // 250}.{i % 250}")
    wait = limiter.retry_after("192.0.2.1")  # a fresh address: the total is reached
    assert wait is not None and 1 <= wait <= 60
    clock.advance(61)
    assert limiter.retry_after("192.0.2.1") is None
