"""The dashboard in a real browser (Debian's Chromium through Playwright).

Every page loads with no console error, no request to another host, and shows what trials wrote as
text; a running experiment updates the open page without a reload and obeys the page's actions; the
service's login, per-user isolation and CSRF guard hold. Screenshots go to docs/images/.
"""

from __future__ import annotations

import asyncio
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from nni_ts.dashboard import Dashboard, LocalBackend, start_dashboard
from nni_ts.experiment import Experiment
from nni_ts.storage.store import Store

from .conftest import LoopThread
from .support import XSS, fill

# Chromium's processes belong to the module's browser fixture, which closes them at the module's end.
pytestmark = pytest.mark.allow_leaked_children


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


@pytest.fixture
def static_site(tmp_path: Path, loop_thread: LoopThread) -> Any:
    store = Store(tmp_path / "nni-ts.db")
    fill(store, trials=60, steps=8)
    runner = None

    async def up() -> str:
        nonlocal runner
        dashboard = Dashboard(store.path)
        runner, url = await start_dashboard(dashboard, "127.0.0.1", 0)
        return url

    url = loop_thread.run(up())
    yield url, store
    loop_thread.run(runner.cleanup())
    store.close()


def test_every_page_loads_clean_and_shows_trial_text_as_text(static_site: Any, watched: Any) -> None:
    expect = _expect()
    url, store = static_site
    w = watched(url)
    page = w.page
    w.goto("#/")
    expect(page.locator('tr[data-experiment-id="e1"]')).to_be_visible()
    expect(page.locator("main")).to_contain_text("dash <b>test</b>")  # a name with markup stays text
    w.shot("experiments")

    w.goto("#/experiments/e1")
    expect(page.locator("#best-value")).not_to_have_text("—")
    expect(page.locator("#config")).to_contain_text("<hidden>")
    expect(page.locator("#config")).not_to_contain_text("hunter2")
    expect(page.locator("#best-chart canvas").first).to_be_visible()
    w.shot("overview")

    w.goto("#/experiments/e1/trials?sort=final&order=desc")
    expect(page.locator("#trials-table tbody tr")).to_have_count(50)
    expect(page.locator("#page-info")).to_have_text("1–50 of 60")
    expect(page.locator("#pcp canvas")).to_be_visible()
    expect(page.get_by_role("cell", name=XSS, exact=True).first).to_be_visible()
    w.shot("trials")

    # A filter from the toolbar lands in the URL and the server filters.
    page.select_option("#filter-field", "param.opt")
    page.select_option("#filter-op", "eq")
    page.fill("#filter-value", XSS)
    page.click("#filter-add")
    expect(page).to_have_url(re.compile(r"f=param\.opt%3Aeq%3A"))
    n = sum(t.parameters["opt"] == XSS for t in store.list_trials("e1"))
    expect(page.locator("#page-info")).to_have_text(f"1–{min(n, 50)} of {n}")

    # Brushing the final-value axis of the parallel coordinates filters the table.
    box = page.locator("#pcp canvas").bounding_box()
    x = box["x"] + box["width"] - 60  # the last axis: final value
    page.mouse.move(x, box["y"] + 40)
    page.mouse.down()
    page.mouse.move(x, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    expect(page).to_have_url(re.compile(r"f=final%3Abetween%3A"))
    expect(page.locator("#page-info")).not_to_have_text(f"1–{min(n, 50)} of {n}")

    w.goto("#/experiments/e1/trials/t00001")
    expect(page.locator("#records tbody tr")).to_have_count(9)
    expect(page.locator("#records")).to_contain_text(XSS)  # a metric key, as text
    expect(page.locator("#trial-chart canvas").first).to_be_visible()
    w.shot("trial")

    for tab in ("final", "intermediate", "timeline"):
        w.goto("#/experiments/e1/charts")
        page.click(f"#tab-{tab}")
        expect(page.locator(f"#chart-{tab} canvas").first).to_be_visible()
        w.shot(f"charts-{tab}")

    w.goto("#/experiments/e1/compare?ids=t00001,t00002,t00003")
    expect(page.locator("#compare-table")).to_contain_text("#3 t00003")
    expect(page.locator("#compare-chart canvas").first).to_be_visible()
    w.shot("compare")

    # Nothing a trial wrote became markup: no <img> anywhere, no dialog, no error, no foreign request.
    assert page.locator("img").count() == 0
    w.check_clean()


SLOW_TRIAL = textwrap.dedent(
    """\
    import nni, os, time
    p = nni.get_next_parameter()
    for i in range(600):
        nni.report_intermediate_result({"default": p["x"] * i, "<img src=x onerror=alert(1)>": i})
        if os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), "release")):
            break
        time.sleep(0.1)
    nni.report_final_result(p["x"])
    """
)


@pytest.mark.slow
def test_a_running_experiment_updates_the_page_and_obeys_it(
    tmp_path: Path, loop_thread: LoopThread, watched: Any
) -> None:
    expect = _expect()
    code = tmp_path / "code"
    code.mkdir()
    (code / "trial.py").write_text(SLOW_TRIAL)
    cfg = {
        "experimentName": "live",
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
        "trialCommand": f"{sys.executable} trial.py",
        "trialCodeDirectory": str(code),
        "trialConcurrency": 1,
        "maxTrialNumber": 4,
        "tuner": {"name": "Random", "classArgs": {"seed": 1}},
        "trainingService": {"platform": "local"},
    }
    state: dict[str, Any] = {}

    async def up() -> str:
        exp = Experiment(cfg, experiment_id="live1", control_socket=False)
        state["exp"] = exp
        state["run"] = loop_thread.loop.create_task(exp.run())
        dashboard = Dashboard(exp.store.path, LocalBackend(exp))
        state["runner"], url = await start_dashboard(dashboard, "127.0.0.1", 0)
        # The page opens once the loop has stored the experiment (before, the page's first load is a 404
        # and it follows nothing: under load, starting the tuner can take longer than opening the page).
        async with asyncio.timeout(60):
            while "live1" not in await dashboard.reader.experiment_ids():
                await asyncio.sleep(0.02)
        return url

    url = loop_thread.run(up())
    exp: Experiment = state["exp"]
    try:
        w = watched(url)
        w.accept_confirms = True
        page = w.page
        w.goto("#/experiments/live1/trials")
        rows = page.locator("#trials-table tbody tr[data-trial-id]")
        expect(rows).to_have_count(1, timeout=30_000)
        first = rows.first.get_attribute("data-trial-id")

        # A new metric shows on the open trial page without a reload.
        w.goto(f"#/experiments/live1/trials/{first}")
        records = page.locator("#records tbody tr")
        expect(records.first).to_be_visible(timeout=30_000)
        before = records.count()
        expect(records).not_to_have_count(before, timeout=5_000)
        expect(page.locator("#records")).to_contain_text(XSS)
        w.shot("trial-live")

        # Re-run the trial with an edited parameter (NNI's customized trial): it is queued in the loop.
        page.click("#rerun")
        page.fill("#dlg-rerun textarea", '{"x": 0.125}')
        page.click("#dlg-rerun button[type=submit]")
        expect(page.locator("#toast")).to_contain_text("queued")

        # Update from the page: concurrency 1 -> 2; a second trial appears in the table without a reload.
        w.goto("#/experiments/live1/trials")
        expect(rows).to_have_count(1)
        page.click("#btn-update")
        page.fill("#dlg-update input[name=trialConcurrency]", "2")
        w.shot("update-dialog")
        page.click("#dlg-update button[type=submit]")
        expect(rows).to_have_count(2, timeout=30_000)
        assert exp.config.trial_concurrency == 2
        # The second trial is the customized one (queued ahead of the tuner's proposals).
        expect(page.get_by_role("cell", name="0.125", exact=True)).to_be_visible()

        # Extend from the page: maxTrialNumber 4 -> 6.
        page.click("#btn-extend")
        page.fill("#dlg-extend input[name=maxTrialNumber]", "6")
        page.click("#dlg-extend button[type=submit]")
        expect(page.locator("#toast")).to_contain_text("extended")
        assert exp.config.max_trial_number == 6

        # Kill one trial from its row.
        victim = page.locator(f'tr[data-trial-id="{first}"]')
        victim.locator("button.kill").click()
        expect(victim.locator(".status-cell")).to_have_text("USER_CANCELED", timeout=30_000)

        # Stop the experiment from the page.
        page.click("#btn-stop")
        expect(page.locator(".exp-head .status").first).to_have_text(re.compile("STOPPED"), timeout=60_000)
        loop_thread.run(_wait(state["run"]), timeout=90)
        assert exp.status == "STOPPED"
        w.check_clean()
    finally:
        (code / "release").write_text("")
        if not state["run"].done():
            exp.stop("test over")
            loop_thread.run(_wait(state["run"]), timeout=90)
        loop_thread.run(state["runner"].cleanup())


async def _wait(task: Any) -> None:
    import asyncio

    await asyncio.wait_for(asyncio.shield(task), 80)


@pytest.mark.slow
def test_service_login_isolation_and_csrf(tmp_path: Path, loop_thread: LoopThread, watched: Any) -> None:
    expect = _expect()
    from nni_ts.service import users
    from nni_ts.service.app import ExperimentService, ServiceSettings
    from nni_ts.service.db import open_database

    gate = tmp_path / "gate"
    trial = tmp_path / "gated.py"
    trial.write_text(GATED_TRIAL)
    state: dict[str, Any] = {}

    async def up() -> str:
        url_db = f"sqlite:///{tmp_path / 'svc.db'}"
        db = await open_database(url_db)
        try:
            state["tokens"] = {n: await users.add_user(db, n, admin=n == "root") for n in ("alice", "bob", "root")}
        finally:
            await db.close()
        service = ExperimentService(ServiceSettings(data_dir=tmp_path / "svc", database_url=url_db))
        await service.start()
        state["service"] = service
        runner = web.AppRunner(service.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state["runner"] = runner
        cmd = f"{sys.executable} {trial} {gate}"
        for name in ("alice", "bob"):
            user = await users.get_user(service.db, name)
            config = {
                "experimentName": f"{name}'s",
                "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
                "trialCommand": cmd,
                "trialConcurrency": 1,
                "maxTrialNumber": 2,
                "tuner": {"name": "Random", "classArgs": {"optimize_mode": "maximize"}},
                "trainingService": {"platform": "local"},
            }
            created = await service.create_experiment(user, "ws", config)
            state[name] = created["id"]
        return f"http://127.0.0.1:{runner.addresses[0][1]}/"

    url = loop_thread.run(up())
    try:
        w = watched(url)
        page = w.page
        w.goto()
        expect(page).to_have_url(re.compile(r"/login$"))
        page.fill("#token", "not-a-token")
        page.click("button[type=submit]")
        expect(page.locator("#failed")).to_be_visible()
        w.shot("login")
        page.fill("#token", state["tokens"]["alice"])
        page.click("button[type=submit]")
        expect(page.locator(f'tr[data-experiment-id="{state["alice"]}"]')).to_be_visible()
        expect(page.locator(f'tr[data-experiment-id="{state["bob"]}"]')).to_have_count(0)
        cookie = next(c for c in w.context.cookies() if c["name"] == "nni_ts_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        # Bob's experiment does not exist for Alice, in the page and in the API.
        w.goto(f"#/experiments/{state['bob']}")
        expect(page.locator(".exp-head")).to_contain_text("no experiment")
        api = page.request.get(url + f"dash/api/experiments/{state['bob']}")
        assert api.status == 404
        # Chromium logs those refused requests as console errors; they were the point of this step.
        assert w.errors and all("404" in e for e in w.errors), w.errors
        w.errors.clear()
        # A POST without the page's CSRF token is refused even with the session cookie.
        refused = page.request.post(url + f"dash/api/experiments/{state['alice']}/stop")
        assert refused.status == 403 and "CSRF" in refused.json()["error"]
        assert state["service"].manager.is_live(state["alice"])
        # A cross-site form post (another origin, the victim logged in) is refused too.
        evil = _evil_site(loop_thread, url + f"dash/api/experiments/{state['alice']}/stop")
        w.allow_foreign = True
        try:
            page.goto(evil)
            page.click("#go")
            expect(page.locator("body")).to_contain_text(re.compile("CSRF|Log in"))
        finally:
            w.allow_foreign = False
            loop_thread.run(evil_cleanup(evil))
        assert w.errors and all("403" in e for e in w.errors), w.errors  # the refused post, logged by Chromium
        w.errors.clear()
        assert state["service"].manager.is_live(state["alice"])
        # The page itself carries the token: Alice stops her experiment from the dashboard.
        w.accept_confirms = True
        w.goto(f"#/experiments/{state['alice']}")
        page.click("#btn-stop")
        expect(page.locator(".exp-head .status").first).to_have_text(re.compile("STOPPED"), timeout=60_000)
        # An admin sees everyone's experiments.
        admin = watched(url)
        admin.goto("login")
        admin.page.fill("#token", state["tokens"]["root"])
        admin.page.click("button[type=submit]")
        expect(admin.page.locator(f'tr[data-experiment-id="{state["bob"]}"]')).to_be_visible()
        expect(admin.page.locator(f'tr[data-experiment-id="{state["alice"]}"]')).to_be_visible()
        admin.check_clean()
        w.foreign.clear()  # the evil page was on another origin on purpose
        w.check_clean()
    finally:
        gate.write_text("")

        async def down() -> None:
            await state["runner"].cleanup()
            await state["service"].close()

        loop_thread.run(down(), timeout=120)


GATED_TRIAL = textwrap.dedent(
    """\
    import os, sys, time
    import nni
    params = nni.get_next_parameter()
    nni.report_intermediate_result(1)
    deadline = time.monotonic() + 120
    while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
        time.sleep(0.05)
    nni.report_final_result(params["x"])
    """
)
_EVIL: dict[str, Any] = {}


def _evil_site(loop_thread: LoopThread, target: str) -> str:
    """A page on another origin with a form that posts to ``target`` (what a malicious site would do)."""

    async def up() -> str:
        async def page(request: web.Request) -> web.Response:
            html = f'<form method="post" action="{target}"><button id="go" type="submit">win</button></form>'
            return web.Response(text=html, content_type="text/html")

        app = web.Application()
        app.router.add_get("/", page)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
        _EVIL[url] = runner
        return url

    return loop_thread.run(up())


async def evil_cleanup(url: str) -> None:
    await _EVIL.pop(url).cleanup()
