"""
The admin page in a real browser: Debian's headless Chromium, driven by
Selenium through chromedriver, against a real realtimed (real PostgreSQL,
real port) and real Socket.IO clients publishing and joining channels.

Screenshots of each view are kept in the test's temporary directory
(``admin-screenshots/`` under trial's ``--temp-directory``).

Chromium and chromedriver are required: without them these tests fail (CI
installs them; ``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any

import requests
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.support import create_database
from tests.test_admin import admin_daemon
from tests.test_realtime import KEYS, PATIENCE, Client, token

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

#: Seconds the browser has for anything the test waits for.
BROWSER_PATIENCE = 2 * PATIENCE


def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


class Browser:
    """
    A headless Chromium under Selenium.  Its methods block; the tests run
    them in a thread while the reactor serves.
    """

    def __init__(self, screenshots: str) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.screenshots = screenshots
        self.profile = tempfile.mkdtemp(prefix="realtimed-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--window-size=1280,900",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--lang=en-US",
            f"--user-data-dir={self.profile}",
        ):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.console: list[dict[str, Any]] = []

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def wait(self, condition: Callable[[Any], Any], what: str) -> Any:
        """
        What C{condition} returns once it is true.  The page redraws its
        tables, so an element found a moment ago may be gone: that is
        looked at again.
        """
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(
                self.driver,
                BROWSER_PATIENCE,
                poll_frequency=0.05,
                ignored_exceptions=[StaleElementReferenceException],
            ).until(condition)
        except TimeoutException:
            self.shoot("timed-out")
            raise AssertionError(
                f"timed out waiting for {what}; the page says: "
                f"{self.text('#notice')!r}; console: {self.read_console()}"
            ) from None

    def find(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def find_all(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def visible(self, selector: str) -> Any:
        def shown(_: Any) -> Any:
            found = self.find_all(selector)
            return found[0] if found and found[0].is_displayed() else False

        return self.wait(shown, f"{selector} to be shown")

    def text(self, selector: str) -> str:
        """
        The text the element shows, or C{""} when there is none.
        """
        text = self.script(
            "const found = document.querySelector(arguments[0]);"
            "return found === null ? '' : found.innerText;",
            selector,
        )
        return str(text)

    def type(self, selector: str, text: str) -> None:
        field = self.visible(selector)
        field.clear()
        field.send_keys(text)

    def click(self, selector: str) -> None:
        def clicked(_: Any) -> bool:
            self.visible(selector).click()
            return True

        self.wait(clicked, f"{selector} to be clicked")

    def script(self, source: str, *args: Any) -> Any:
        return self.driver.execute_script(source, *args)

    def shoot(self, name: str) -> str:
        os.makedirs(self.screenshots, exist_ok=True)
        path = os.path.join(self.screenshots, f"{name}.png")
        self.driver.save_screenshot(path)
        return path

    def read_console(self) -> list[dict[str, Any]]:
        """
        The browser's console entries so far (kept in C{console}).
        """
        self.console.extend(self.driver.get_log("browser"))
        return self.console


class AdminBrowserTests(TestCase):
    """
    An operator's session on the admin page.
    """

    timeout = 300

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
        if missing:
            self.fail(
                f"{' and '.join(missing)} not found: the admin page's browser tests need "
                "Debian's Chromium and its driver (apt-get install chromium chromium-driver)"
            )
        try:
            import selenium  # noqa: F401
        except ImportError:
            self.fail("selenium is not installed: pip install -e '.[test]'")
        self.logged: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            self.logged.append(f"{formatEvent(event)} {event!r}")

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.database = create_database(self)
        self.daemon = yield admin_daemon(self.database, self.mktemp()).start()
        self.addCleanup(self.daemon.stop)
        self.screenshots = os.path.abspath("admin-screenshots")
        self.browser = yield deferToThread(Browser, self.screenshots)
        self.addCleanup(deferToThread, self.browser.quit)
        self.clients: list[Client] = []
        self.addCleanup(self.close_clients)

    def close_clients(self) -> Any:
        def close() -> None:
            for client in self.clients:
                client.close()

        return deferToThread(close)

    def client(self, sub: str) -> Client:
        """
        A python-socketio client connected as the user C{sub}.  Blocks.
        """
        client = Client(self.daemon.address)
        self.clients.append(client)
        client.connect({"token": token(sub)})
        return client

    def sign_in(self) -> None:
        browser = self.browser
        browser.driver.get(self.daemon.address + "/admin/")
        browser.type("#api-key", KEYS.api_key)
        browser.click("#sign-in-form button[type=submit]")
        browser.visible("#channels-view")
        browser.wait(
            lambda _: browser.text("#socket-state") == "live", "the live connection to be made"
        )

    def row(self, table: str, attribute: str, value: str) -> str:
        return f'{table} tbody tr[data-{attribute}="{value}"]'

    @inlineCallbacks
    def test_operator_session(self) -> Any:
        """
        An operator signs in with the API key; creates, edits, disables,
        enables and deletes channels; tails a pattern and sees a client's
        message arrive; sees two clients present in a channel; sees the
        statistics chart drawn and the webhook failures of a receiver that
        is down; signs out.  The browser's console has no error, and the
        key appears in no URL and in no log line of the server.
        """
        yield deferToThread(self.operator_session)
        console = yield deferToThread(self.browser.read_console)
        problems = [entry for entry in console if entry.get("level") in ("SEVERE", "WARNING")]
        self.assertEqual(problems, [], "the browser's console has errors or warnings")
        self.assertEqual([line for line in self.logged if KEYS.api_key in line], [])

    def operator_session(self) -> None:
        browser = self.browser
        self.sign_in()
        self.assertNotIn(KEYS.api_key, browser.driver.current_url)

        def upgraded(_: Any) -> bool:
            metrics = requests.get(
                self.daemon.address + "/metrics",
                headers={"x-api-key": KEYS.api_key},
                timeout=PATIENCE,
            ).text
            return 'realtimed_connections{transport="websocket"} 1.0' in metrics

        # The policy lets the page's Socket.IO connection use WebSocket.
        browser.wait(upgraded, "the page's connection to upgrade to WebSocket")
        self.assertEqual(browser.find("#api-key").get_attribute("value"), "")

        # Channels: create one whose webhook goes nowhere, and one to
        # delete; edit, disable and enable.
        hook = f"http://127.0.0.1:{closed_port()}/hook"
        for pattern, description, webhook in (
            ("lobby:*", "Lobbies", hook),
            ("scratch", "To delete", ""),
        ):
            browser.click("#new-channel")
            browser.type("#channel-pattern", pattern)
            browser.type("#channel-description", description)
            browser.type("#channel-webhooks", webhook)
            browser.click("#channel-save")
            browser.visible(self.row("#channels-table", "pattern", pattern))
        lobby = self.row("#channels-table", "pattern", "lobby:*")
        self.assertIn(hook, browser.text(lobby))
        self.assertIn("Enabled", browser.text(lobby))

        browser.click(f'{lobby} button[aria-label="Edit lobby:*"]')
        browser.type("#channel-description", "Waiting rooms")
        browser.click("#channel-save")
        browser.wait(lambda _: "Waiting rooms" in browser.text(lobby), "the edit to show")

        browser.click(f'{lobby} button[aria-label="Disable lobby:*"]')
        browser.wait(lambda _: "Disabled" in browser.text(lobby), "the channel to be disabled")
        browser.click(f'{lobby} button[aria-label="Enable lobby:*"]')
        browser.wait(lambda _: "Enabled" in browser.text(lobby), "the channel to be enabled")

        scratch = self.row("#channels-table", "pattern", "scratch")
        browser.click(f'{scratch} button[aria-label="Delete scratch"]')
        browser.visible("#confirm-dialog")
        browser.click("#confirm-yes")
        browser.wait(lambda _: not browser.find_all(scratch), "the channel to be deleted")
        browser.shoot("channels")

        # Live tail of the pattern; a client publishes on one of its names.
        browser.click(f'{lobby} button[aria-label="Tail lobby:*"]')
        browser.visible("#tail-view")
        browser.visible('#tail-subscriptions li[data-channel="lobby:*"][data-state="subscribed"]')
        alice = self.client("alice")
        ack = alice.request("REALTIME_SUBSCRIBE", {"channel": "lobby:1"})
        self.assertTrue(ack["ok"], ack)
        ack = alice.request(
            "REALTIME_PUBLISH",
            {"channel": "lobby:1", "event": "greeting", "payload": {"text": "hello from alice"}},
        )
        self.assertTrue(ack["ok"], ack)
        message = self.row("#tail-table", "message-id", ack["messageId"])
        browser.visible(message)
        shown = browser.text(message)
        for part in ("lobby:1", "greeting", "user alice", '"text":"hello from alice"'):
            self.assertIn(part, shown)
        browser.shoot("tail")

        # Presence of a second client beside the first.
        bob = self.client("bob")
        ack = bob.request("REALTIME_SUBSCRIBE", {"channel": "lobby:1"})
        self.assertTrue(ack["ok"], ack)
        browser.click('nav a[data-view="presence"]')
        browser.type("#presence-channel", "lobby:1")
        browser.click("#presence-form button[type=submit]")
        for member in ("alice", "bob"):
            browser.visible(self.row("#presence-table", "presence-id", member))
        self.assertIn("2 members present in lobby:1", browser.text("#presence-summary"))
        browser.shoot("presence")

        # Statistics: the chart is drawn.
        browser.click('nav a[data-view="stats"]')
        browser.wait(
            lambda _: browser.script(
                "const canvas = document.querySelector('#stats-chart canvas');"
                "return canvas !== null && canvas.width > 0 && canvas.height > 0"
                " && canvas.getBoundingClientRect().width > 0;"
            ),
            "the statistics chart to be drawn",
        )
        browser.wait(lambda _: browser.text("#stats-total") == "1", "the message count")
        self.assertIn("greeting", browser.text("#stats-table"))
        browser.shoot("stats")

        # Webhook failures: the receiver of lobby:* is down.
        browser.click('nav a[data-view="failures"]')

        asked = [time.monotonic()]

        def listed(_: Any) -> bool:
            if browser.find_all("#failures-table tbody tr"):
                return True
            if time.monotonic() - asked[0] > 0.5:
                # Not failed yet when the view was shown: ask again.
                asked[0] = time.monotonic()
                browser.click("#failures-form button[type=submit]")
            return False

        browser.wait(listed, "the failed delivery to be listed")
        failure = browser.text("#failures-table tbody tr")
        for part in ("lobby:1", "greeting", hook, "retrying", "refused"):
            self.assertIn(part, failure)
        browser.shoot("failures")

        # The key is kept for this tab only, and forgotten on signing out.
        stored = browser.script("return sessionStorage.getItem('realtimed.apiKey')")
        self.assertEqual(stored, KEYS.api_key)
        self.assertEqual(browser.script("return localStorage.length"), 0)
        browser.click("#sign-out")
        browser.visible("#sign-in-view")
        self.assertIsNone(browser.script("return sessionStorage.getItem('realtimed.apiKey')"))
        self.assertFalse(browser.find("#app").is_displayed())

    @inlineCallbacks
    def test_refused_key(self) -> Any:
        """
        A wrong key is refused with the server's reason, and nothing is
        kept; the page is usable with the keyboard alone, from signing in
        to the sections.
        """
        yield deferToThread(self.keyboard_session)
        console = yield deferToThread(self.browser.read_console)
        # The refused sign-in is the one failed request.
        problems = [
            entry
            for entry in console
            if entry.get("level") in ("SEVERE", "WARNING")
            and "status of 401" not in entry.get("message", "")
        ]
        self.assertEqual(problems, [])

    def keyboard_session(self) -> None:
        from selenium.webdriver.common.keys import Keys

        browser = self.browser
        browser.driver.get(self.daemon.address + "/admin/")
        field = browser.visible("#api-key")
        self.assertEqual(browser.script("return document.activeElement.id"), "api-key")
        field.send_keys("ik_not-the-key" + Keys.ENTER)
        browser.wait(lambda _: "refused" in browser.text("#notice"), "the refusal")
        self.assertEqual(browser.text("#notice"), "This key was refused: Invalid token.")
        self.assertEqual(field.get_attribute("aria-invalid"), "true")
        self.assertIsNone(browser.script("return sessionStorage.getItem('realtimed.apiKey')"))

        field.clear()
        field.send_keys(KEYS.api_key + Keys.ENTER)
        browser.visible("#channels-view")
        # Every control has a name a screen reader can say.
        unnamed = browser.script(
            "return [...document.querySelectorAll('input, select, textarea, button')]"
            ".filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')"
            " && !e.textContent.trim()).map((e) => e.outerHTML);"
        )
        self.assertEqual(unnamed, [])
        # Tab reaches the sections' links; Enter follows one, and focus
        # moves to its heading.
        for _ in range(30):
            browser.driver.switch_to.active_element.send_keys(Keys.TAB)
            if browser.script("return document.activeElement.dataset.view") == "stats":
                break
        else:
            self.fail("Tab never reached the link to the statistics")
        browser.driver.switch_to.active_element.send_keys(Keys.ENTER)
        browser.visible("#stats-view")
        browser.wait(
            lambda _: browser.script("return document.activeElement.id") == "stats-title",
            "focus on the section's heading",
        )
