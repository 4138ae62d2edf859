"""The experiment service end to end, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from service_support import GATED_TRIAL, Running, quick_config, storage_url

from nni_ts.storage.base import open_storage

# The seeds' launcher body, byte for byte (seeds/000: NNI Launcher, "提交任务").
SEED_POST = {
    "user": "cuizihan",
    "workspace": "test",
    "trailConcurrency": 2,
    "num": 8,
    "target": "maximize",
    "command": "python3 train.py",
    "gpuNum": 0,
    "search_space": {
        "solver": {"_type": "choice", "_value": ["svd", "cholesky", "sparse_cg", "sag", "lsqr"]},
        "alpha": {"_type": "choice", "_value": [1, 0.5, 0.1, 0.01, 5]},
        "max_iter": {"_type": "choice", "_value": [1, 10, 100, 1000, 10000, 300000]},
    },
}
SEED_GET = {"workspace": "test", "user": "cuizihan"}

TRAIN_PY = b"""
import nni
params = nni.get_next_parameter()
score = params["alpha"] * (1 if params["solver"] == "svd" else 0.5) + params["max_iter"] / 1e6
nni.report_intermediate_result(score / 2)
nni.report_final_result(score)
"""


async def _create(svc: Running, user: str, workspace: str, config: dict[str, Any]) -> str:
    body = await svc.api.ok("POST", f"/workspaces/{workspace}/experiments", token=svc.tokens[user], json=config)
    assert body["status"] == "RUNNING"
    return str(body["id"])


async def test_two_users_each_see_and_touch_only_their_own(svc: Running) -> None:
    api, t = svc.api, svc.tokens
    a = await _create(svc, "alice", "vision", quick_config(trials=3))
    b = await _create(svc, "bob", "nlp", quick_config(trials=2, concurrency=1))
    done_a = await api.wait_experiment(a, t["alice"])
    done_b = await api.wait_experiment(b, t["bob"])
    assert done_a["status"] == "DONE" and done_a["trialCounts"] == {"SUCCEEDED": 3}
    assert done_b["status"] == "DONE" and done_b["trialCounts"] == {"SUCCEEDED": 2}
    best = done_a["best"]
    assert best["finalValue"] == max(
        tr["finalValue"] for tr in await api.ok("GET", f"/experiments/{a}/trials", token=t["alice"])
    )
    assert abs(best["finalValue"] - 2 * best["parameters"]["x"]) < 1e-9

    # Lists: each user only their own; the admin everything.
    assert [e["id"] for e in await api.ok("GET", "/experiments", token=t["alice"])] == [a]
    assert [e["id"] for e in await api.ok("GET", "/experiments", token=t["bob"])] == [b]
    assert sorted(e["id"] for e in await api.ok("GET", "/experiments", token=t["root"])) == sorted([a, b])
    assert [w["name"] for w in await api.ok("GET", "/workspaces", token=t["alice"])] == ["vision"]
    assert len(await api.ok("GET", "/workspaces", token=t["root"])) == 2

    # Another user's experiment does not exist for you: reading, logs, stopping, deleting all 404.
    trial = (await api.ok("GET", f"/experiments/{b}/trials", token=t["bob"]))[0]["id"]
    for method, path in [
        ("GET", f"/experiments/{b}"),
        ("GET", f"/experiments/{b}/trials"),
        ("GET", f"/experiments/{b}/trials/{trial}"),
        ("GET", f"/experiments/{b}/trials/{trial}/log"),
        ("GET", f"/experiments/{b}/metrics"),
        ("GET", f"/experiments/{b}/events"),
        ("POST", f"/experiments/{b}/stop"),
        ("DELETE", f"/experiments/{b}"),
    ]:
        status, body = await api.call(method, path, token=t["alice"])
        assert status == 404, (method, path, status, body)
        assert "error" in body
    status, _ = await api.call("POST", f"/experiments/{b}/extend", token=t["alice"], json={"maxTrialNumber": 5})
    assert status == 404
    # The legacy routes too: alice's token cannot act as bob.
    status, body = await api.call("GET", "/nni-exp", token=t["alice"], params={"user": "bob", "workspace": "nlp"})
    assert status == 403, body
    status, body = await api.call("DELETE", "/nni-exp", token=t["alice"], json={"user": "bob", "workspace": "nlp"})
    assert status == 403, body
    # Still there for bob, with its results, metrics and logs.
    shown = await api.ok("GET", f"/experiments/{b}/trials/{trial}", token=t["bob"])
    assert [m["type"] for m in shown["metrics"]] == ["PERIODICAL", "FINAL"]
    log = await api.ok("GET", f"/experiments/{b}/trials/{trial}/log", token=t["bob"])
    assert "trial says" in log
    assert len(await api.ok("GET", f"/experiments/{b}/metrics", token=t["bob"])) == 4
    # Pages of trials and metrics.
    page = await api.ok("GET", f"/experiments/{a}/trials", token=t["alice"], params={"limit": "1", "offset": "1"})
    assert [p["sequenceId"] for p in page] == [1]
    mine = await api.ok("GET", f"/experiments/{b}/metrics", token=t["bob"], params={"trial": trial})
    assert [(m["trialId"], m["seq"]) for m in mine] == [(trial, 0), (trial, 1)]
    one = await api.ok("GET", f"/experiments/{b}/metrics", token=t["bob"], params={"limit": "1", "offset": "3"})
    assert len(one) == 1 and one[0]["type"] == "FINAL"
    assert (await api.call("GET", f"/experiments/{b}/trials", token=t["bob"], params={"limit": "0"}))[0] == 400

    # No token, a wrong token: 401.
    assert (await api.call("GET", "/experiments"))[0] == 401
    assert (await api.call("GET", "/experiments", token="nts_not-a-real-token"))[0] == 401

    # Bob deletes his; the admin deletes alice's. Files go too.
    await api.ok("DELETE", f"/experiments/{b}", token=t["bob"])
    assert (await api.call("GET", f"/experiments/{b}", token=t["bob"]))[0] == 404
    assert not (svc.data_dir / "workspaces" / "bob" / "nlp" / "experiments" / b).exists()
    storage = await open_storage(storage_url(svc))  # nor its records in the experiments' storage
    try:
        stored = {e.id for e in await storage.list_experiments()}
    finally:
        await storage.close()
    assert b not in stored and a in stored
    await api.ok("DELETE", f"/experiments/{a}", token=t["root"])
    assert await api.ok("GET", "/experiments", token=t["root"]) == []


async def test_the_seeds_launcher_bodies_work_exactly(svc: Running) -> None:
    api = svc.api
    token = await _token_for(svc, "cuizihan")
    status, text = await api.call("GET", "/api/v1/nni-exp/hello")
    assert (status, text) == (200, "Hello world")
    # The seeds' trial code is uploaded into the workspace (the launcher baked it into an image).
    await api.ok("PUT", "/workspaces/test/files/train.py", token=token, data=TRAIN_PY)
    created = await api.ok("POST", "/nni-exp", token=token, json=SEED_POST)
    experiment_id = created["experimentId"]
    # A second POST while it runs is refused with a reason.
    status, body = await api.call("POST", "/nni-exp", token=token, json=SEED_POST)
    assert status in (200, 409), body
    if status == 409:
        assert body["experimentId"] == experiment_id
    await api.wait_experiment(experiment_id, token)
    # GET with the seeds' JSON body, and with query parameters: the same results.
    by_body = await api.ok("GET", "/nni-exp", token=token, json=SEED_GET)
    by_query = await api.ok("GET", "/nni-exp", token=token, params=SEED_GET)
    assert by_body["experimentId"] == by_query["experimentId"]
    latest = by_body["experimentId"]
    result = by_body
    assert result["status"] == "DONE", result
    assert result["trialCounts"] == {"SUCCEEDED": 8}
    assert result["config"]["maxTrialNumber"] == 8 and result["config"]["trialConcurrency"] == 2
    assert result["optimizeMode"] == "maximize"
    assert len(result["trials"]) == 8
    for trial in result["trials"]:
        p = trial["parameters"]
        assert set(p) == {"solver", "alpha", "max_iter"}
        expected = p["alpha"] * (1 if p["solver"] == "svd" else 0.5) + p["max_iter"] / 1e6
        assert abs(trial["finalValue"] - expected) < 1e-9
    assert result["best"]["finalValue"] == max(t["finalValue"] for t in result["trials"])
    # DELETE with the seeds' body removes the workspace's experiments.
    deleted = await api.ok("DELETE", "/nni-exp", token=token, json=SEED_GET)
    assert latest in deleted["deleted"]
    assert (await api.call("GET", "/nni-exp", token=token, json=SEED_GET))[0] == 404
    # The correct spelling is accepted as well; both spellings at once must agree.
    fixed = {k: v for k, v in SEED_POST.items() if k != "trailConcurrency"} | {"trialConcurrency": 1, "num": 1}
    again = await api.ok("POST", "/nni-exp", token=token, json=fixed)
    await api.wait_experiment(again["experimentId"], token)
    status, body = await api.call("POST", "/nni-exp", token=token, json=SEED_POST | {"trialConcurrency": 3})
    assert status == 422 and body["path"] == "trialConcurrency", body
    # Without a token the launcher routes are refused (token required by default).
    assert (await api.call("POST", "/nni-exp", json=SEED_POST))[0] == 401
    assert (await api.call("GET", "/nni-exp", json=SEED_GET))[0] == 401


async def _token_for(svc: Running, name: str) -> str:
    from nni_ts.service.users import add_user

    token = await add_user(svc.service.db, name)
    assert token is not None
    return token


async def test_bad_input_is_a_4xx_with_a_reason(svc: Running) -> None:
    api, token = svc.api, svc.tokens["alice"]
    cases: list[tuple[Any, int, str | None]] = [
        (quick_config() | {"trialConcurrency": 0}, 422, "trialConcurrency"),
        (quick_config() | {"trialConcurency": 2}, 422, "trialConcurency"),
        (quick_config() | {"tuner": {"name": "NoSuchTuner"}}, 422, "tuner.name"),
        (quick_config() | {"searchSpace": {"x": {"_type": "uniform", "_value": [1]}}}, 422, None),
        (quick_config() | {"trainingService": {"platform": "remote"}}, 422, "trainingService.platform"),
        (quick_config() | {"experimentWorkingDirectory": "/tmp"}, 422, "experimentWorkingDirectory"),
        (quick_config() | {"trialCodeDirectory": "/etc"}, 422, "trialCodeDirectory"),
        (quick_config() | {"tuner": {"className": "os.System"}}, 422, "tuner.className"),
        (
            quick_config() | {"trainingService": {"platform": "local", "trialCodeDirectory": "/etc"}},
            422,
            "trainingService.trialCodeDirectory",
        ),
        (
            quick_config() | {"trainingService": {"platform": "local", "kubeconfig": "/k"}},
            422,
            "trainingService.kubeconfig",
        ),
        ([1, 2], 422, None),
    ]
    for config, code, path in cases:
        status, body = await api.call("POST", "/workspaces/w/experiments", token=token, json=config)
        assert status == code, (config, status, body)
        assert isinstance(body["error"], str) and body["error"]
        if path:
            assert body.get("path") == path, body
    both = quick_config() | {"trialConcurrency": 0, "maxTrialNumber": -1}
    status, body = await api.call("POST", "/workspaces/w/experiments", token=token, json=both)
    assert status == 422 and body["paths"] == ["trialConcurrency", "maxTrialNumber"], body
    status, body = await api.call("POST", "/workspaces/w/experiments", token=token, data=b"{not json")
    assert status == 400 and "JSON" in body["error"]
    status, body = await api.call("POST", "/nni-exp", token=token, json=SEED_POST | {"target": "biggest"})
    assert status == 422 and body["path"] == "target"
    status, body = await api.call(
        "POST", "/nni-exp", token=token, json={k: v for k, v in SEED_POST.items() if k != "num"}
    )
    assert status == 422 and body["path"] == "num"
    status, body = await api.call("GET", "/nni-exp", token=token, params={"user": "alice"})
    assert status == 400 and "workspace" in body["error"]
    status, body = await api.call("PUT", "/workspaces/w/files/a/../../x", token=token, data=b"x")
    assert 400 <= status < 500
    status, body = await api.call("GET", "/experiments/nope/trials/x/log", token=token, params={"file": "/etc/passwd"})
    assert status in (400, 404)
    # A mistake only the platform sees (a missing code directory) ends the experiment in ERROR, with a reason.
    status, body = await api.call(
        "POST", "/workspaces/w/experiments", token=token, json=quick_config() | {"trialCodeDirectory": "missing"}
    )
    assert status == 201, body
    failed = await api.wait_experiment(body["id"], token)
    assert failed["status"] == "ERROR" and "does not exist" in failed["message"], failed
    # A v1 config is accepted as well (converted).
    v1 = {
        "authorName": "default",
        "experimentName": "v1",
        "trialConcurrency": 1,
        "maxTrialNum": 1,
        "trainingServicePlatform": "local",
        "useAnnotation": False,
        "tuner": {"builtinTunerName": "Random", "classArgs": {"optimize_mode": "minimize"}},
        "trial": {"command": quick_config()["trialCommand"], "codeDir": ".", "gpuNum": 0},
        "searchSpace": {"x": {"_type": "choice", "_value": [0.5]}},
    }
    status, body = await api.call("POST", "/workspaces/w/experiments", token=token, json=v1)
    if status == 422:  # v1 has no inline search space: give it as searchSpacePath inside the workspace
        v1.pop("searchSpace")
        await api.ok(
            "PUT",
            "/workspaces/w/files/space.json",
            token=token,
            data=json.dumps({"x": {"_type": "choice", "_value": [0.5]}}).encode(),
        )
        v1["searchSpacePath"] = "space.json"
        status, body = await api.call("POST", "/workspaces/w/experiments", token=token, json=v1)
    assert status == 201, body
    done = await api.wait_experiment(body["id"], token)
    assert done["optimizeMode"] == "minimize" and done["best"]["finalValue"] == 1.0


async def test_quotas_are_enforced(svc: Running) -> None:
    api, token = svc.api, svc.tokens["bob"]  # bob: 2 concurrent trials, no GPU
    gate = svc.data_dir / "gate-quota"
    await api.ok("PUT", "/workspaces/q/files/trial.py", token=token, data=GATED_TRIAL.encode())
    held = await _create(svc, "bob", "q", quick_config(trials=2, concurrency=2, command=f"python3 trial.py {gate}"))
    status, body = await api.call("POST", "/workspaces/q2/experiments", token=token, json=quick_config(concurrency=1))
    assert status == 403 and body["quota"] == "concurrentTrials", body
    status, body = await api.call(
        "POST", "/nni-exp", token=token, json=SEED_POST | {"user": "bob", "workspace": "q3", "trailConcurrency": 1}
    )
    assert status == 403, body
    me = await api.ok("GET", "/me", token=token)
    assert me["usage"] == {"concurrentTrials": 2, "gpus": 0} and me["quota"]["concurrentTrials"] == 2
    gate.touch()
    await api.wait_experiment(held, token)
    # Trials are free again; GPUs are not (bob has none).
    status, body = await api.call(
        "POST", "/workspaces/q2/experiments", token=token, json=quick_config(trialGpuNumber=1)
    )
    assert status == 403 and body["quota"] == "gpus", body
    again = await _create(svc, "bob", "q2", quick_config(trials=1, concurrency=1))
    await api.wait_experiment(again, token)


async def test_audit_log_records_every_change_and_no_secret(svc: Running) -> None:
    api, t = svc.api, svc.tokens
    a = await _create(svc, "alice", "aud", quick_config(trials=1, concurrency=1))
    await api.wait_experiment(a, t["alice"])
    await api.ok("POST", f"/experiments/{a}/extend", token=t["alice"], json={"maxTrialNumber": 2})
    await api.wait_experiment(a, t["alice"])
    await api.ok("DELETE", f"/experiments/{a}", token=t["alice"])
    # A config with a password is refused (wrong platform); the password shows nowhere.
    remote = quick_config() | {
        "trainingService": {"platform": "remote", "machineList": [{"host": "h", "user": "u", "password": "hunter2"}]}
    }
    status, body = await api.call("POST", "/workspaces/aud/experiments", token=t["alice"], json=remote)
    assert status == 422 and "hunter2" not in json.dumps(body)
    mine = await api.ok("GET", "/audit", token=t["alice"])
    actions = [(e["actor"], e["action"]) for e in reversed(mine)]
    assert actions == [
        ("alice", "experiment.create"),
        ("alice", "experiment.extend"),
        ("alice", "experiment.delete"),
    ], actions
    assert all(e["target"].startswith(f"alice/aud/{a}") for e in mine)
    assert all(isinstance(e["time"], int) for e in mine)
    everything = await api.ok("GET", "/audit", token=t["root"])
    assert {"user.add"} <= {e["action"] for e in everything}
    text = json.dumps(everything)
    for token in t.values():
        assert token not in text
    assert "hunter2" not in text


def test_secrets_are_redacted() -> None:
    from nni_ts.service.configs import redact

    config = {
        "trainingService": {
            "platform": "remote",
            "machineList": [{"host": "h", "user": "u", "password": "p1", "passphrase": "p2", "sshKeyFile": "/k"}],
        },
        "machineList": [{"ip": "h", "passwd": "p3"}],
        "nested": {"apiToken": "p4", "clientSecret": "p5"},
    }
    shown = json.dumps(redact(config))
    for secret in ("p1", "p2", "p3", "p4", "p5"):
        assert f'"{secret}"' not in shown
    assert '"/k"' in shown and '"h"' in shown
    from nni_ts.service.app import _mask_secret_inputs

    message = (
        "x: invalid experiment config:\n  ts.machineList[0].password: bad (got 12345)\n  trialConcurrency: bad (got 0)"
    )
    assert _mask_secret_inputs(message) == (
        "x: invalid experiment config:\n  ts.machineList[0].password: bad (got ***)\n  trialConcurrency: bad (got 0)"
    )


async def test_sse_streams_trial_and_metric_events(svc: Running) -> None:
    api, token = svc.api, svc.tokens["alice"]
    gate = svc.data_dir / "gate-sse"
    await api.ok("PUT", "/workspaces/s/files/trial.py", token=token, data=GATED_TRIAL.encode())
    a = await _create(svc, "alice", "s", quick_config(trials=2, concurrency=2, command=f"python3 trial.py {gate}"))
    reader = asyncio.create_task(api.events(a, token))
    # Open the gate once the stream is attached (its first event is sent on connect).
    async with asyncio.timeout(30):
        while not svc.service.manager._live[a].subscribers:
            await asyncio.sleep(0.01)
    gate.touch()
    events = await asyncio.wait_for(reader, 60)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "experiment" and events[0]["status"] == "RUNNING"
    assert events[-1]["event"] == "experiment" and events[-1]["status"] == "DONE"
    metrics = [e for e in events if e["event"] == "metric"]
    ends = [e for e in events if e["event"] == "trial_end"]
    assert len(ends) == 2 and all(e["status"] == "SUCCEEDED" for e in ends)
    for end in ends:
        mine = [m for m in metrics if m["trialId"] == end["trialId"]]
        # The stream joined while trials ran: it has at least the records written after the gate opened.
        assert mine[-1]["type"] == "FINAL" and mine[-1]["value"] == end["finalValue"]
        assert events.index(mine[-1]) < events.index(end)
    # A finished experiment's stream says how it ended, then closes.
    again = await api.events(a, token)
    assert again == [{"event": "experiment", "experimentId": a, "status": "DONE", "message": "All trials done."}]


async def test_stop_and_extend(svc: Running) -> None:
    api, token = svc.api, svc.tokens["alice"]
    gate = svc.data_dir / "gate-stop"
    await api.ok("PUT", "/workspaces/x/files/trial.py", token=token, data=GATED_TRIAL.encode())
    a = await _create(svc, "alice", "x", quick_config(trials=4, concurrency=2, command=f"python3 trial.py {gate}"))
    # Raise the budget while it runs.
    shown = await api.ok("POST", f"/experiments/{a}/extend", token=token, json={"maxTrialNumber": 5})
    assert shown["maxTrialNumber"] == 5
    status, body = await api.call("POST", f"/experiments/{a}/extend", token=token, json={"maxTrialNumber": 3})
    assert status == 422 and body["path"] == "maxTrialNumber"
    status, body = await api.call("POST", f"/experiments/{a}/extend", token=token, json={"rerunFailed": True})
    assert status == 409
    # A running trial's log, through the platform.
    async with asyncio.timeout(30):
        while True:
            trials = await api.ok("GET", f"/experiments/{a}/trials", token=token)
            running = [t for t in trials if t["status"] == "RUNNING" and t["metricCount"] == 2]
            if running:
                break
            await asyncio.sleep(0.05)
    log_path = f"/experiments/{a}/trials/{running[0]['id']}/log"
    assert "waiting at the gate" in await api.ok("GET", log_path, token=token)
    assert await api.ok("GET", log_path, token=token, params={"tail": "5"}) == "gate\n"
    assert (await api.call("GET", log_path, token=token, params={"tail": "-1"}))[0] == 400
    stopped = await api.ok("POST", f"/experiments/{a}/stop", token=token)
    assert stopped["status"] == "STOPPED"
    assert (await api.call("POST", f"/experiments/{a}/stop", token=token))[0] == 409
    done = await api.ok("GET", f"/experiments/{a}", token=token)
    assert done["trialCounts"] == {"USER_CANCELED": 2}, done
    # Continue the stopped experiment: the remaining budget runs (the gate is open now).
    gate.touch()
    await api.ok("POST", f"/experiments/{a}/extend", token=token, json={"maxTrialNumber": 5})
    done = await api.wait_experiment(a, token)
    assert done["status"] == "DONE"
    assert done["trialCounts"] == {"USER_CANCELED": 2, "SUCCEEDED": 3}, done


async def test_extend_reruns_failed_trials(svc: Running) -> None:
    api, token = svc.api, svc.tokens["alice"]
    flag = svc.data_dir / "fail-once"
    flag.touch()
    cmd = (
        f'python3 -c "import os, sys, nni; p = nni.get_next_parameter(); f = {str(flag)!r}; '
        "exists = os.path.exists(f); exists and os.remove(f); exists and sys.exit(3); "
        'nni.report_final_result(1.0)"'
    )
    a = await _create(svc, "alice", "r", quick_config(trials=1, concurrency=1, command=cmd))
    first = await api.wait_experiment(a, token)
    assert first["trialCounts"] == {"FAILED": 1}
    await api.ok("POST", f"/experiments/{a}/extend", token=token, json={"rerunFailed": True})
    done = await api.wait_experiment(a, token)
    assert done["trialCounts"] == {"FAILED": 1, "SUCCEEDED": 1}, done
    trials = await api.ok("GET", f"/experiments/{a}/trials", token=token)
    assert [t["attempt"] for t in trials] == [1, 2] and trials[0]["parameters"] == trials[1]["parameters"]


async def test_openapi_describes_every_route(svc: Running) -> None:
    document = await svc.api.ok("GET", "/openapi.json")
    described = {
        (method.upper(), path) for path, ops in document["paths"].items() for method in ops if method != "parameters"
    }
    routes = set()
    for resource in svc.service.app().router.resources():
        info = resource.get_info()
        path = info.get("formatter") or info.get("path")
        for route in resource:
            # Outside /api/v1 is the web dashboard (its own routes, docs/dashboard.md), not this API.
            if route.method != "HEAD" and str(path).startswith("/api/v1"):
                routes.add((route.method, _plain(str(path))))
    assert routes == described


def _plain(path: str) -> str:
    import re

    return re.sub(r"\{(\w+):[^}]*\}+", r"{\1}", path) if ":" in path else path


def test_database_url_mistakes_are_clear(tmp_path: Path) -> None:
    import pytest

    from nni_ts.errors import UserError
    from nni_ts.service.db import open_database

    with pytest.raises(UserError, match="Unsupported database URL 'mysql'"):
        asyncio.run(open_database("mysql://x"))


async def test_legacy_routes_without_tokens_when_configured(db_url: str, tmp_path: Path) -> None:
    from service_support import running_service

    from nni_ts.service import ServiceSettings

    settings = ServiceSettings(data_dir=tmp_path / "svc", database_url=db_url, legacy_auth="none")
    async with running_service(settings) as (service, api, _url):
        body = SEED_POST | {
            "command": quick_config()["trialCommand"],
            "num": 2,
            "search_space": {"x": {"_type": "choice", "_value": [0.25]}},
        }
        created = await api.ok("POST", "/nni-exp", json=body)
        async with asyncio.timeout(60):
            while True:
                result = await api.ok("GET", "/nni-exp", json=SEED_GET)
                if result["status"] != "RUNNING":
                    break
                await asyncio.sleep(0.05)
        assert result["experimentId"] == created["experimentId"] and result["trialCounts"] == {"SUCCEEDED": 2}
        # Only the launcher routes are open; the rest of the API still needs a token.
        assert (await api.call("GET", "/experiments"))[0] == 401
        await api.ok("DELETE", "/nni-exp", params=SEED_GET)
        rows = await service.db.fetch("SELECT actor, action FROM svc_audit ORDER BY id")
        assert [tuple(r) for r in rows] == [
            ("cuizihan (unauthenticated)", "user.add"),
            ("cuizihan (unauthenticated)", "experiment.create"),
            ("cuizihan (unauthenticated)", "experiment.delete"),
        ]


async def test_a_service_that_cannot_open_its_store_says_why(tmp_path: Path) -> None:
    import threading

    import pytest

    from nni_ts.errors import StoreError
    from nni_ts.service import ExperimentService, ServiceSettings

    data = tmp_path / "svc"
    (data / "experiments.db").mkdir(parents=True)  # a directory where the store's file should be
    service = ExperimentService(ServiceSettings(data_dir=data, database_url=f"sqlite:///{tmp_path / 's.db'}"))
    with pytest.raises(StoreError, match="experiments.db"):
        await service.start()
    assert not [t for t in threading.enumerate() if t.name == "nni-ts-service-engine"]


async def test_best_trial_is_a_succeeded_one(svc: Running) -> None:
    """The trial with the highest result failed after reporting it: the service's best is another one."""
    cmd = (
        "python3 -c \"import nni, sys; p = nni.get_next_parameter(); nni.report_final_result(p['x']); "
        "sys.exit(p['x'] == 3)\""
    )
    config = quick_config(trials=3, concurrency=1, command=cmd)
    config["searchSpace"] = {"x": {"_type": "choice", "_value": [1, 2, 3]}}
    config["tuner"] = {"name": "GridSearch", "classArgs": {"optimize_mode": "maximize"}}
    exp = await _create(svc, "alice", "best", config)
    done = await svc.api.wait_experiment(exp, svc.tokens["alice"])
    assert done["trialCounts"] == {"SUCCEEDED": 2, "FAILED": 1}
    assert done["best"]["finalValue"] == 2 and done["best"]["status"] == "SUCCEEDED"
