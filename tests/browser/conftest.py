"""Browser tests: Playwright driving Debian's Chromium against a live server, on SQLite only.

Under CI=true a missing /usr/bin/chromium fails the run; on a laptop the tests skip, loudly. Full-page
screenshots go to artifacts/screenshots/ at the repository root (gitignored); the run prints the folder.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Page,
    ViewportSize,
    sync_playwright,
)

from tests.conftest import IN_CI
from tests.dashboard_helpers import PASSWORD

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
DESKTOP: ViewportSize = {"width": 1440, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}
_saved: list[Path] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say where the screenshots are, once, at the end of the run."""
    if _saved:
        terminalreporter.write_line(f"browser screenshots ({len(_saved)}): {SCREENSHOTS}")


@pytest.fixture
def database_url(sqlite_template: Path, tmp_path: Path) -> str:
    """SQLite only for browser tests (the HTTP tests cover PostgreSQL): a fresh copy of the template."""
    path = tmp_path / "mailtrack.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per test module.

    Not per session: Playwright's sync API keeps an event loop running in the main thread while it is
    open, and later tests on the same worker that call asyncio.run() would fail.
    """
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        if IN_CI:
            pytest.fail(f"CI=true and {message}: the browser tests cannot run", pytrace=False)
        pytest.skip(f"!!! SKIPPING browser tests: {message} !!!")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Watched:
    """A page that records dialogs (an XSS would open one) and CSP violations."""

    def __init__(self, context: BrowserContext) -> None:
        self.context = context
        self.page: Page = context.new_page()
        self.dialogs: list[str] = []
        self.csp_errors: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("console", self._console)

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _console(self, message: ConsoleMessage) -> None:
        text = message.text
        if "Content Security Policy" in text or "Refused to" in text:
            self.csp_errors.append(text)

    def login(self, base_url: str, email: str, password: str = PASSWORD) -> None:
        """Log in through the form, as a manager does."""
        self.page.goto(f"{base_url}/manager/login")
        self.page.fill("input[name=email]", email)
        self.page.fill("input[name=password]", password)
        with self.page.expect_navigation():
            self.page.click("button[type=submit]")

    def screenshot(self, name: str, *, selector: str | None = None) -> Path:
        """A full-page screenshot (or one element's) under artifacts/screenshots/."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        if selector is None:
            self.page.screenshot(path=str(path), full_page=True)
        else:
            self.page.locator(selector).screenshot(path=str(path))
        _saved.append(path)
        return path


OpenPage = Callable[..., Watched]


@pytest.fixture
def open_page(browser: Browser) -> Iterator[OpenPage]:
    """A factory of watched pages in fresh contexts (own cookies), desktop by default."""
    contexts: list[BrowserContext] = []

    def make(viewport: ViewportSize | None = None) -> Watched:
        context = browser.new_context(viewport=viewport or DESKTOP, accept_downloads=True)
        contexts.append(context)
        return Watched(context)

    yield make
    for context in contexts:
        context.close()
