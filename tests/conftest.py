"""Shared test set-up: hygiene fixtures (no leaked tasks or processes), an isolated NNI_TS_HOME, and no
silent skips in CI.

Under ``CI=true`` a skipped test fails the run: a skip almost always means a missing dependency (kubectl,
sshd, PostgreSQL, the real NNI, the real CRDs beside the repository...), and CI installs every one of
them (``scripts/test``), so a skip there means a test that silently stopped running. Only the reasons in
``CI_ALLOWED_SKIPS`` may skip in CI: things a CI machine may legitimately lack.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["nni_ts.testing.hygiene"]

#: Skip reasons (their beginning) allowed under CI=true, and why a CI machine may lack what they need.
CI_ALLOWED_SKIPS: dict[str, str] = {
    # tests/k8s/test_k8s_kubelet_faults.py: needs CAP_SYS_ADMIN, which unprivileged CI containers lack.
    "bind-mounted volumes need root and `unshare --mount`": "privileges, not a package",
    # tests/remote/test_remote_password.py: creating a throw-away Unix user needs root.
    "a throw-away user with a password needs root": "privileges, not a package",
    # tests/service/test_isolation.py: trials run as throw-away Unix users, which needs root.
    "a throw-away OS user for trials needs root": "privileges, not a package",
}


def under_ci() -> bool:
    """Whether this run is CI's (``CI=true``, as GitHub Actions, GitLab and most others set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_leaked_children: the test manages processes that outlive it")


#: Tests of the conformance kit that are slow on every real platform (50 trials at once); the kit itself
#: does not mark them, so that third parties need not declare our `slow` marker.
SLOW_KIT_TESTS = {"test_many_concurrent_trials"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        cls = getattr(item, "cls", None)
        if cls is not None and getattr(cls, "processes", False) and item.originalname in SLOW_KIT_TESTS:
            item.add_marker(pytest.mark.slow)


def _fail_a_skip_under_ci(report: pytest.TestReport | pytest.CollectReport, what: str) -> None:
    if not (report.skipped and not hasattr(report, "wasxfail") and under_ci()):
        return
    longrepr = report.longrepr
    reason = (longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)).removeprefix("Skipped: ")
    if any(reason.startswith(allowed) for allowed in CI_ALLOWED_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"This {what} skipped under CI=true: {reason}\n"
        "CI installs every dependency of the suite (scripts/test), so a skip there hides a test that no "
        "longer runs. Install what is missing, or add the reason to CI_ALLOWED_SKIPS in tests/conftest.py "
        "with why a CI machine may lack it."
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    report: pytest.TestReport = yield
    _fail_a_skip_under_ci(report, "test")
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[pytest.CollectReport]:
    """A whole module skipped at import (``pytest.importorskip`` at the top) fails its collection."""
    report: pytest.CollectReport = yield
    _fail_a_skip_under_ci(report, "module")
    return report


@pytest.fixture(autouse=True)
def nni_ts_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own NNI_TS_HOME, so no test sees another's experiments or store."""
    home = tmp_path / "nni-ts-home"
    monkeypatch.setenv("NNI_TS_HOME", str(home))
    yield home


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """The session's one throw-away PostgreSQL server (tests/service, tests/dashboard); each test takes
    a database of its own in it (nni_ts.testing.postgres.new_database)."""
    from nni_ts.testing import postgres

    if not postgres.installed():
        pytest.skip("PostgreSQL is not installed (initdb, pg_ctl, postgres); scripts/test installs it")
    # One role logs in with a password (tests of --db-password-file); every other role is trusted.
    with postgres.start_server(password_role="nts_pw") as server:
        yield server
