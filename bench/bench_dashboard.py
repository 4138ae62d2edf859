"""The web dashboard in headless Chromium: draw times at 10,000 trials x 100 intermediate results,
metric-to-page latency, and the server's CPU and memory with 20 pages following a running experiment.

The experiment is written straight into a store (``tests/dashboard/support.py``); the dashboard runs
in a subprocess (so its CPU and RSS are its own); a writer in this process plays a running experiment
(metrics for the running trials, a new trial now and then) through its own SQLite connection, as the
experiment loop would. Baselines, same run and same browser: an empty page served by a bare aiohttp
app, and a bare aiohttp JSON response of the size of one trials page; the server's idle CPU and RSS.

    python bench/bench_dashboard.py [--trials 10000] [--steps 100] [--pages 20] [--samples 200]

Needs Debian's chromium (/usr/bin/chromium) and the playwright package (never `playwright install`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
from _common import percentile  # noqa: E402

CHROMIUM = os.environ.get("NNI_TS_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(db: str, port: int) -> None:
    """The dashboard alone (read-only backend), until stdin closes."""
    from nni_ts.dashboard import Dashboard, start_dashboard

    async def main() -> None:
        runner, _ = await start_dashboard(Dashboard(db), "127.0.0.1", port)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()

    asyncio.run(main())


def bare_server(port: int, body: bytes) -> Any:
    """A bare aiohttp app: an empty page and a static JSON body (the baselines), in a thread."""
    from aiohttp import web

    loop = asyncio.new_event_loop()
    state: dict[str, Any] = {}

    async def up() -> None:
        app = web.Application()
        app.router.add_get("/", lambda r: web.Response(text="<!doctype html><title>x</title><p id=x>x</p>",
                                                       content_type="text/html"))  # fmt: skip
        app.router.add_get("/data.json", lambda r: web.Response(body=body, content_type="application/json"))
        state["runner"] = runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(up(), loop).result(30)
    return loop, state


def fill_store(db: Path, trials: int, steps: int) -> None:
    from dashboard.support import fill

    from nni_ts.storage.store import Store

    t0 = time.perf_counter()
    with Store(db) as store:
        fill(store, "e1", trials=trials, steps=steps, running=10)
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    print(f"store: {trials} trials x {steps} intermediate results written in {time.perf_counter() - t0:.1f} s")


class Writer:
    """Plays a running experiment: ``rate`` metrics a second over the 10 running trials, a new trial a second."""

    def __init__(self, db: Path, trials: int, steps: int, rate: float) -> None:
        from nni_ts.storage.store import Store

        self.store = Store(db)
        self.running = [f"t{i:05d}" for i in range(trials - 10, trials)]
        self.seq = {t: self._next_seq(t) for t in self.running}
        done = self.store._db.execute("SELECT MAX(sequence_id) FROM trials WHERE experiment_id='e1'").fetchone()[0]
        self.next_trial = int(done) + 1
        self.rate = rate
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _next_seq(self, trial: str) -> int:
        row = self.store._db.execute(
            "SELECT MAX(seq) FROM metrics WHERE experiment_id='e1' AND trial_id=?", (trial,)
        ).fetchone()
        return int(row[0]) + 1 if row[0] is not None else 0

    def metric(self, trial: str) -> None:
        self.seq.setdefault(trial, self._next_seq(trial))
        from dashboard.support import record

        now = time.time() * 1000
        n = self.seq[trial]
        self.seq[trial] = n + 1
        self.store.add_metric("e1", trial, n, type="PERIODICAL", value=n, data=record("PERIODICAL", {"t": now}))

    def _run(self) -> None:
        from nni_ts.storage.store import TrialRecord

        i = 0
        last_trial = time.monotonic()
        while not self.stop.wait(1 / self.rate):
            self.metric(self.running[i % len(self.running)])
            i += 1
            if time.monotonic() - last_trial > 1:
                last_trial = time.monotonic()
                tid = f"n{self.next_trial:05d}-{int(time.time() * 1000)}"
                self.store.insert_trial(
                    TrialRecord("e1", tid, self.next_trial, self.next_trial, {"lr": 0.1, "opt": "sgd"})
                )
                self.next_trial += 1

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(5)
        self.store.close()


def timed(page: Any, action: Any, selector: str, timeout: float = 60_000) -> float:
    t0 = time.perf_counter()
    action()
    page.wait_for_selector(selector, timeout=timeout)
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--pages", type=int, default=20)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--db", help="Reuse this store (written by an earlier run with the same sizes).")
    ap.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    import psutil
    from playwright.sync_api import sync_playwright

    db = Path(args.db) if args.db else Path(tempfile.mkdtemp(prefix="bench-dash-")) / "nni-ts.db"
    if not db.exists():
        fill_store(db, args.trials, args.steps)
    print(f"store: {db}")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--serve", str(db), str(port)]
    server = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    proc = psutil.Process(server.pid)
    base = f"http://127.0.0.1:{port}/"
    bare_port = _free_port()
    page_body = json.dumps({"rows": [{"id": i, "v": i * 0.5} for i in range(50)]}).encode()
    bare_loop, _ = bare_server(bare_port, page_body)
    bare = f"http://127.0.0.1:{bare_port}/"
    results: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        ctx = browser.new_context(viewport={"width": 1280, "height": 860})
        page = ctx.new_page()

        def runs(fn: Any, n: int = 3) -> float:
            return sorted(fn() for _ in range(n))[n // 2]  # median of n

        # Baselines: an empty page from a bare aiohttp app; a bare JSON response (50 rows) fetched by a page.
        results["baseline empty page load"] = runs(lambda: timed(page, lambda: page.goto(bare), "#x"))
        page.goto(bare)
        results["baseline bare JSON fetch"] = runs(
            lambda: page.evaluate(
                "async () => { const t = performance.now(); await (await fetch('data.json')).json();"
                " return performance.now() - t; }"
            )  # fmt: skip
        )

        def fresh(fragment: str) -> Any:
            return lambda: (page.goto("about:blank"), page.goto(base + fragment))

        results["overview (best-so-far chart)"] = runs(
            lambda: timed(page, fresh("#/experiments/e1"), "#best-chart canvas")
        )
        results["trials table (first page, sorted by final)"] = runs(
            lambda: timed(page, fresh("#/experiments/e1/trials?sort=final&order=desc"), "#trials-table tbody tr")
        )
        results["parallel coordinates (all trials)"] = runs(
            lambda: timed(page, fresh("#/experiments/e1/trials"), "#pcp canvas")
        )
        results["trials table filtered (param.lr between, sorted)"] = runs(
            lambda: timed(
                page,
                fresh("#/experiments/e1/trials?f=param.lr:between:0.001,0.01&sort=param.lr"),
                "#trials-table tbody tr",
            )  # fmt: skip
        )
        results["final value chart"] = runs(
            lambda: timed(page, fresh("#/experiments/e1/charts"), "#chart-final canvas")
        )

        def tab(name: str) -> float:
            page.goto("about:blank")
            page.goto(base + "#/experiments/e1/charts")
            page.wait_for_selector("#chart-final canvas")
            return timed(page, lambda: page.click(f"#tab-{name}"), f"#chart-{name} canvas")

        results[f"intermediate curves ({args.trials} x {args.steps})"] = runs(lambda: tab("intermediate"))
        results["timeline + concurrency"] = runs(lambda: tab("timeline"))
        results["trial page (100 records, chart)"] = runs(
            lambda: timed(page, fresh(f"#/experiments/e1/trials/t{args.trials - 1:05d}"), "#trial-chart canvas")
        )
        print("\nTime until drawn (median of 3, ms, fresh page load each):")
        for k, v in results.items():
            print(f"  {k:52s} {v:8.0f}")

        # Latency: a metric written to the store -> its row on the open trial page.
        trial = f"t{args.trials - 1:05d}"
        page.goto(base + f"#/experiments/e1/trials/{trial}")
        page.wait_for_selector("#records tbody tr")
        page.evaluate(
            """() => { window.__lat = [];
            const rows = () => document.querySelectorAll('#records tbody tr');
            const seen = new Set(Array.from(rows()).map((tr) => tr.dataset.seq));
            new MutationObserver(() => { const now = Date.now();
              for (const tr of document.querySelectorAll('#records tbody tr')) {
                const seq = tr.dataset.seq; if (seen.has(seq)) continue; seen.add(seq);
                const m = /"t":([0-9.]+)/.exec(tr.children[3].textContent);
                if (m) window.__lat.push(now - Number(m[1]));
              } }).observe(document.getElementById('records'), {childList: true, subtree: true}); }"""
        )
        writer = Writer(db, args.trials, args.steps, rate=10)
        writer.running = [trial]
        for _ in range(args.samples):
            writer.metric(trial)
            time.sleep(0.1)
        deadline = time.monotonic() + 10
        while page.evaluate("() => window.__lat.length") < args.samples and time.monotonic() < deadline:
            time.sleep(0.1)
        lat = page.evaluate("() => window.__lat")
        writer.close()
        print(f"\nMetric written -> shown on the open trial page ({len(lat)} of {args.samples} samples, ms): "
              f"p50={percentile(lat, 50):.0f} p99={percentile(lat, 99):.0f} max={max(lat):.0f}")  # fmt: skip

        # Server CPU and memory: idle (no page), then N pages following a running experiment.
        page.goto("about:blank")

        def load(seconds: float) -> tuple[float, float]:
            proc.cpu_percent(None)
            time.sleep(seconds)
            return proc.cpu_percent(None), proc.memory_info().rss / 2**20

        time.sleep(2)
        idle_cpu, idle_rss = load(10)
        # One context per page, as separate people would: a browser opens at most 6 HTTP/1.1 connections
        # per host and each open page holds one for its event stream (see docs/dashboard.md).
        pages = [browser.new_context(viewport={"width": 1280, "height": 860}).new_page() for _ in range(args.pages)]
        for i, pg in enumerate(pages):
            view = ["trials?sort=seq&order=desc", "", "charts"][i % 3]
            pg.goto(base + f"#/experiments/e1/{view}")
        for pg in pages:
            pg.wait_for_selector("canvas", timeout=120_000)
        writer = Writer(db, args.trials, args.steps, rate=20)
        writer.thread.start()
        busy_cpu, busy_rss = load(20)
        writer.close()
        print(f"\nServer process, {args.trials} trials in the store:")
        print(f"  idle, no page                     CPU {idle_cpu:5.1f} %  RSS {idle_rss:6.0f} MiB")
        print(
            f"  {args.pages} pages following, 20 metrics/s + 1 trial/s  CPU {busy_cpu:5.1f} %  RSS {busy_rss:6.0f} MiB"
        )
        browser.close()
    server.stdin.close()  # type: ignore[union-attr]
    server.wait(30)
    bare_loop.call_soon_threadsafe(bare_loop.stop)


if __name__ == "__main__":
    main()
