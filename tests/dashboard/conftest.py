"""Browser tests: Debian's Chromium driven by Playwright (never `playwright install`), one browser per
module; the dashboard's server runs on an event loop in a thread (Playwright's sync API owns the test's)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest

T = TypeVar("T")
CHROMIUM = os.environ.get("NNI_TS_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "images"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
]


class LoopThread:
    """An asyncio loop in a thread: ``run(coro)`` waits for a coroutine run there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="dashboard-test-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium package.")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


class Watched:
    """A page whose console errors, page errors, dialogs and foreign requests are recorded."""

    def __init__(self, context: Any, base: str) -> None:
        self.context = context
        self.base = base
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.dialogs: list[str] = []
        self.accept_confirms = False
        self.allow_foreign = False  # a test that visits another origin on purpose sets it
        allowed = urlsplit(base).netloc

        def on_request(route: Any) -> None:
            url = route.request.url
            parts = urlsplit(url)
            if parts.scheme in ("http", "https", "ws", "wss") and parts.netloc != allowed:
                self.foreign.append(url)
                if not self.allow_foreign:
                    route.abort()
                    return
                route.continue_()
            else:
                route.continue_()

        context.route("**/*", on_request)
        self.page = context.new_page()
        self.page.on(
            "console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None
        )
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

        def on_dialog(d: Any) -> None:
            self.dialogs.append(f"{d.type}: {d.message}")
            if d.type == "confirm" and self.accept_confirms:
                d.accept()
            else:
                d.dismiss()

        self.page.on("dialog", on_dialog)

    def goto(self, fragment: str = "") -> None:
        self.page.goto(self.base + fragment)

    def check_clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.foreign == [], f"requests to other hosts: {self.foreign}"
        assert [d for d in self.dialogs if not d.startswith("confirm")] == [], self.dialogs

    def shot(self, name: str) -> None:
        """A screenshot: into docs/images/ with NNI_TS_DOC_SCREENSHOTS=1 (how docs/dashboard.md's are
        made), else only taken (a test run leaves the working tree as it was)."""
        png = self.page.screenshot(full_page=False)
        assert png.startswith(b"\x89PNG")
        if os.environ.get("NNI_TS_DOC_SCREENSHOTS") == "1":
            SHOTS.mkdir(parents=True, exist_ok=True)
            (SHOTS / f"dashboard-{name}.png").write_bytes(png)


@pytest.fixture
def watched(browser: Any) -> Iterator[Any]:
    """``watched(base_url)`` -> a Watched page in a fresh context (closed after the test)."""
    contexts: list[Any] = []

    def make(base: str, **kw: Any) -> Watched:
        ctx = browser.new_context(viewport={"width": 1280, "height": 860}, **kw)
        contexts.append(ctx)
        return Watched(ctx, base)

    yield make
    for ctx in contexts:
        ctx.close()
