"""API requests a trial costs: the token Secret is written once per burst of submissions, not once per trial
(bench/bench_k8s_requests.py measures the whole per-trial cost; this holds the part that regressed)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from nni_ts.testing.conformance import form
from nni_ts.testing.k8s import FakeCluster

from .conftest import Factory


@pytest.fixture
def platform() -> str:
    return "kubernetes"


async def test_a_burst_of_submissions_shares_the_token_secret_writes(
    cluster: FakeCluster, make_service: Factory, tmp_path: Path
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "trial.py").write_text("import time\ntime.sleep(30)\n")
    svc = make_service(code, "python3 trial.py")
    async with svc:
        before = sum(n for (_, res), n in cluster.request_counts.items() if res == "secrets")
        details = await asyncio.gather(*(svc.submit_trial_job(form({"i": i}, i)) for i in range(8)))
        writes = sum(n for (_, res), n in cluster.request_counts.items() if res == "secrets") - before
        secret = cluster.get("secrets", svc._token_secret_name())
        assert secret is not None
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        for d in details:  # every trial's own token, and only by reference in its job
            assert data[f"trial-{d.id}"] == svc.server.token_for(d.id)
        # One create, then the tokens that queued behind it in one or two merge patches (was 8 creates,
        # 7 of them refused with 409, and 7 patches: 15 requests).
        assert writes <= 3, cluster.request_counts
        for d in details:
            await svc.cancel_trial_job(d.id)
