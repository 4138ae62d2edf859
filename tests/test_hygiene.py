"""The hygiene fixtures catch what they promise to catch."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def test_leaked_process_and_task_fail_the_test(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # only pytest-asyncio (-p below): seconds saved
    pytester.makeconftest('pytest_plugins = ["nni_ts.testing.hygiene"]\n')
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        """
        import asyncio, subprocess, sys

        def test_leaks_a_process():
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)

        async def test_leaks_a_task():
            asyncio.get_running_loop().create_task(asyncio.sleep(60), name="forgotten-task")

        def test_clean():
            subprocess.run([sys.executable, "-c", "pass"], check=True)
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-p", "pytest_asyncio.plugin")
    result.assert_outcomes(passed=3, errors=2)  # teardown errors count apart
    out = result.stdout.str()
    assert "left child processes running" in out
    assert "forgotten-task" in out
