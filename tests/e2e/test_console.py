"""The console in a real browser (Debian's headless Chromium, driven by selenium) against the
session's running services: a team token's overview shows the APIs' figures and follows a new
usage within its 2 s refresh, usage details filter and export the ledger's own CSV, a member
key sees its seat only, and another team's page is "not found".

Each page's screenshot is saved under the run's output directory (and, with
`CONSOLE_SCREENSHOTS=dir`, copied there too: `docs/console/` holds one set).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from console.formatting import credits
from metering.processes import free_port_run, stop_process
from tests.e2e.conftest import MODEL, SEED_USAGE, Team, eventually, new_team, now

pytestmark = pytest.mark.integration

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

SEEN_WITHIN = 10.0
"""A new usage shows on the overview within the projection's lag plus the 2 s refresh."""


@pytest.fixture(scope="module")
def console(services: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m console` reading the session's services; its URL."""
    port = free_port_run(1)
    log = tmp_path_factory.mktemp("console") / "console.log"
    env = {
        **os.environ,
        "HTTP_PORT": str(port),
        "INGEST_URL": services["ingest"],
        "LEDGER_URL": services["ledger"],
        "QUOTA_URL": services["quota"],
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "console"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        give_up = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()[-2000:]
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < give_up, log.read_text()[-2000:]
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        stop_process(process, grace=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("chromium and chromedriver are missing: `make deploy-tools` installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1360,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Callable[[WebDriver, str], None]:
    out = tmp_path_factory.mktemp("console-screenshots")
    also = os.environ.get("CONSOLE_SCREENSHOTS")

    def save(browser: WebDriver, name: str) -> None:
        browser.set_window_size(1360, 600)
        height = browser.execute_script("return document.body.scrollHeight")
        browser.set_window_size(1360, max(600, min(int(height) + 140, 3000)))
        path = out / f"{name}.png"
        assert browser.save_screenshot(str(path))
        if also:
            Path(also).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(also) / path.name)

    return save


def text(browser: WebDriver, css: str) -> str:
    """The element's text; the overview reloads itself every 2 s, so a read that meets the
    page being replaced is tried again."""
    for _ in range(20):
        try:
            return str(browser.find_element(By.CSS_SELECTOR, css).text)
        except (StaleElementReferenceException, NoSuchElementException):
            time.sleep(0.1)
        except WebDriverException as error:  # Chromium's word for the same race
            if "does not belong to the document" not in str(error):
                raise
            time.sleep(0.1)
    return str(browser.find_element(By.CSS_SELECTOR, css).text)


def wait_for(check: Callable[[], bool], seconds: float) -> float:
    """Seconds it took `check` to hold (fails after `seconds`)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, "not seen in time"
        time.sleep(0.1)
    return time.monotonic() - started


async def team_token(ingest: httpx.AsyncClient, team: Team) -> str:
    issued = await ingest.post(f"/v1/accounts/{team.account_id}/tokens", json={})
    assert issued.status_code == 201, issued.text
    return str(issued.json()["token"])


def sign_in(browser: WebDriver, console: str, credential: str, subscription_id: str = "") -> None:
    browser.get(f"{console}/")
    if browser.find_elements(By.CSS_SELECTOR, "header form button"):
        browser.find_element(By.CSS_SELECTOR, "header form button").click()  # sign out
        wait_for(lambda: signed_out(browser), 10)
    browser.find_element(By.ID, "credential").send_keys(credential)
    if subscription_id:
        browser.find_element(By.ID, "subscription_id").send_keys(subscription_id)
    browser.find_element(By.ID, "signin").click()
    wait_for(lambda: not browser.current_url.endswith("/"), 10)


def signed_out(browser: WebDriver) -> bool:
    """The sign-in page has loaded without a sign-out button: the sign-out form (with its
    CSRF token) was taken. Checked until the page that the form's answer loads is there."""
    try:
        return bool(
            browser.find_elements(By.ID, "credential")
            and not browser.find_elements(By.CSS_SELECTOR, "header form button")
        )
    except StaleElementReferenceException:
        return False


def in_page_fetch(browser: WebDriver, url: str) -> str:
    """What the page itself downloads from `url` (with its HttpOnly cookie)."""
    script = "fetch(arguments[0]).then(r => r.text()).then(arguments[arguments.length - 1])"
    return str(browser.execute_async_script(script, url))


async def test_console_in_a_browser(
    ingest: httpx.AsyncClient,
    services: dict[str, str],
    console: str,
    browser: WebDriver,
    screenshots: Callable[[WebDriver, str], None],
) -> None:
    team = await new_team(ingest, tiers=("standard", "advanced"))
    await team.buy_pack("pack-1", now())
    first, second = team.seats
    await team.use(first, SEED_USAGE)
    await team.use(second, {"input_tokens": 1_000, "output_tokens": 100})
    token = await team_token(ingest, team)
    as_team = {"Authorization": f"Bearer {token}"}
    sub = team.subscription_id

    async with httpx.AsyncClient(headers=as_team, timeout=30) as api:

        async def overview() -> dict[str, Any]:
            answer = await api.get(f"{services['quota']}/v1/subscriptions/{sub}/overview")
            assert answer.status_code == 200, answer.text
            body: dict[str, Any] = answer.json()
            return body

        usage_url = f"{services['ledger']}/v1/subscriptions/{sub}/usage"
        rows = await eventually(
            lambda: api.get(usage_url), lambda a: len(a.json().get("rows", [])) == 2
        )
        charged = sum(Decimal(row["credits"]) for row in rows.json()["rows"])
        # quota applies the same events on its own: wait until it shows both too
        overview_url = f"{services['quota']}/v1/subscriptions/{sub}/overview"
        await eventually(
            lambda: api.get(overview_url), lambda a: Decimal(a.json().get("used", "0")) == charged
        )
        shown = await overview()
        assert Decimal(shown["used"]) > 0

        # the team overview: the API's figures, formatted for people
        sign_in(browser, console, token, sub)
        assert browser.current_url == f"{console}/subscriptions/{sub}"
        assert text(browser, "#used") == credits(shown["used"])
        assert text(browser, "#quota") == credits(shown["quota"])
        assert text(browser, "#remaining") == credits(shown["remaining"])
        assert text(browser, "#utilization").startswith(shown["utilization_percent"].split(".")[0])
        assert "UTC" in text(browser, "#resets")
        for seat in shown["seats"]:
            row = f"tr[data-seat='{seat['seat_id']}']"
            assert text(browser, f"{row} td.used") == credits(seat["used"])
            assert text(browser, f"{row} td.remaining") == credits(seat["remaining"])
        assert text(browser, "tr[data-pack='pack-1'] td.remaining") == credits(
            shown["packs"][0]["remaining"]
        )
        screenshots(browser, "overview")

        # a new usage shows within the page's refresh
        before = text(browser, "#used")
        await team.use(first, SEED_USAGE)
        expected = credits(Decimal(shown["used"]) + Decimal("3.18"))
        took = wait_for(lambda: text(browser, "#used") == expected, SEEN_WITHIN)
        assert before != expected
        print(f"new usage shown on the overview after {took:.1f} s")

        # usage details: filter by seat and model, totals, the ledger's CSV
        await eventually(lambda: api.get(usage_url), lambda a: len(a.json().get("rows", [])) == 3)
        browser.get(f"{console}/subscriptions/{sub}")
        browser.find_element(By.LINK_TEXT, "Usage details").click()
        wait_for(lambda: browser.current_url.endswith("/usage"), 10)
        Select(browser.find_element(By.ID, "seat_id")).select_by_value(first.seat_id)
        browser.find_element(By.ID, "model").send_keys(MODEL)
        browser.find_element(By.ID, "apply").click()
        wait_for(lambda: "model=" in browser.current_url, 10)
        filters = {"seat_id": first.seat_id, "model": MODEL}
        rows = (await api.get(usage_url, params=filters)).json()["rows"]
        assert len(rows) == 2
        shown_rows = browser.find_elements(By.CSS_SELECTOR, "#usage tbody tr[data-request]")
        assert [r.get_attribute("data-request") for r in shown_rows] == [
            r["request_id"] for r in rows
        ]
        assert text(browser, "#total-requests") == "2"
        assert text(browser, "#total-credits") == credits(
            sum((Decimal(r["credits"]) for r in rows), Decimal(0))
        )
        screenshots(browser, "usage")
        csv_href = browser.find_element(By.ID, "csv").get_attribute("href")
        assert csv_href
        downloaded = in_page_fetch(browser, csv_href)
        from_api = await api.get(usage_url, params={**filters, "format": "csv"})
        assert downloaded == from_api.text
        assert len(downloaded.strip().splitlines()) == 3  # the header and two rows

        # another team's subscription: the APIs' 404, shown as "not found"
        other = await new_team(ingest)
        browser.get(f"{console}/subscriptions/{other.subscription_id}")
        assert text(browser, "h1") == "Not found"
        screenshots(browser, "not-found")

    # a member's key: its own seat only
    sign_in(browser, console, first.api_key)
    assert browser.current_url == f"{console}/me"
    assert text(browser, "#member") == "member-1"
    assert first.seat_id in text(browser, "#seat")
    seats = {r.text for r in browser.find_elements(By.CSS_SELECTOR, "#usage tbody td:nth-child(3)")}
    assert seats == {first.seat_id}
    assert second.seat_id not in browser.page_source
    screenshots(browser, "member")
    browser.get(f"{console}/subscriptions/{sub}")
    assert "Please sign in" in browser.page_source


def metering(services: dict[str, str], token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`metering <args>` reading the session's services with `token` (METERING_TOKEN)."""
    env = {
        **os.environ,
        "QUOTA_URL": services["quota"],
        "LEDGER_URL": services["ledger"],
        "METERING_TOKEN": token,
        "METERING_ENV_FILE": "/nonexistent",
    }
    command = [sys.executable, "-m", "metering.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=False)


async def test_terminal_views(ingest: httpx.AsyncClient, services: dict[str, str]) -> None:
    """`metering overview` and `metering usage`: the console's figures in a terminal, or the
    APIs' own JSON with `--json`, read with a team token."""
    team = await new_team(ingest)
    await team.use(team.seat, SEED_USAGE)
    token = await team_token(ingest, team)
    sub = team.subscription_id
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as api:
        usage_url = f"{services['ledger']}/v1/subscriptions/{sub}/usage"
        await eventually(
            lambda: api.get(usage_url),
            lambda a: a.status_code == 200 and len(a.json()["rows"]) == 1,
        )
        await eventually(  # 404 until quota has applied the subscription
            lambda: api.get(f"{services['quota']}/v1/subscriptions/{sub}/overview"),
            lambda a: a.status_code == 200 and a.json()["used"] != "0",
        )
        overview = (await api.get(f"{services['quota']}/v1/subscriptions/{sub}/overview")).json()
        rows = (await api.get(usage_url, params={"model": MODEL})).json()["rows"]

    shown = metering(services, token, "overview", "--subscription", sub)
    assert shown.returncode == 0, shown.stderr
    assert f"{credits(overview['used'])} of {credits(overview['quota'])} credits" in shown.stdout
    assert team.seat.seat_id in shown.stdout
    as_json = metering(services, token, "overview", "--subscription", sub, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["used"] == overview["used"]

    listed = metering(services, token, "usage", "--subscription", sub, "--model", MODEL)
    assert listed.returncode == 0, listed.stderr
    assert rows[0]["request_id"] in listed.stdout
    assert "1 requests, 3.18 credits" in listed.stdout
    listed_json = metering(services, token, "usage", "--subscription", sub, "--json")
    assert json.loads(listed_json.stdout)["rows"] == rows

    other = await new_team(ingest)
    refused = metering(services, token, "overview", "--subscription", other.subscription_id)
    assert refused.returncode == 1
    assert "not found" in refused.stderr
