"""Under CI=true a skip fails the run, except for the reasons tests/conftest.py allows (CI_ALLOWED_SKIPS)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent

SKIPPING = """
import pytest

def test_needs_kubectl():
    pytest.skip("kubectl is not installed (CI installs Debian's kubernetes-client).")

@pytest.fixture
def sshd():
    pytest.skip("sshd is not installed")

def test_needs_sshd(sshd):
    pass

def test_needs_privileges():
    pytest.skip("a throw-away user with a password needs root and useradd/chpasswd")

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_known_bug():
    assert False

def test_fine():
    pass
"""


def _project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    # Only the plugins the conftest needs (hygiene's fixtures are async): loading every installed one
    # (schemathesis, hypothesis...) costs seconds per run.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-p", "pytest_asyncio.plugin", *args)


def test_skips_fail_under_ci_except_the_allowed(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    _project(pytester, monkeypatch)
    pytester.makepyfile(test_deps=SKIPPING)
    monkeypatch.setenv("CI", "true")
    result = _run(pytester, "-rfE")
    result.assert_outcomes(passed=1, skipped=1, xfailed=1, failed=1, errors=1)  # the fixture's skip is at setup
    out = result.stdout.str()
    assert "This test skipped under CI=true: kubectl is not installed" in out
    assert "This test skipped under CI=true: sshd is not installed" in out
    assert result.ret != 0


def test_a_module_skipped_at_import_fails_under_ci(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    _project(pytester, monkeypatch)
    pytester.makepyfile(
        test_extra="import pytest\n\npytest.importorskip('no_such_extra_module')\n\ndef test_x():\n    pass\n",
        test_other="def test_y():\n    pass\n",
    )
    monkeypatch.setenv("CI", "true")
    result = _run(pytester, "-rfE")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*This module skipped under CI=true: could not import 'no_such_extra_module'*"])
    monkeypatch.delenv("CI")
    result = _run(pytester)
    result.assert_outcomes(passed=1, skipped=1)


def test_skips_are_skips_outside_ci(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    _project(pytester, monkeypatch)
    pytester.makepyfile(test_deps=SKIPPING)
    monkeypatch.delenv("CI", raising=False)
    result = _run(pytester)
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)
    assert result.ret == 0


@pytest.mark.parametrize("ci", [True, False])
@pytest.mark.slow
def test_missing_crds_fail_under_ci(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: bool) -> None:
    """A fresh clone without ../shared/crds: the Kubernetes suites' CRD fixtures skip locally, fail in CI."""
    _project(pytester, monkeypatch)
    for sub, files in (("k8s", ["conftest.py", "k8s_support.py"]), ("kube_platforms", ["conftest.py", "__init__.py"])):
        (pytester.path / sub).mkdir()
        for name in files:
            shutil.copy(TESTS / sub / name, pytester.path / sub / name)
    assert not (pytester.path.parent / "shared" / "crds").exists()
    (pytester.path / "k8s" / "test_crd.py").write_text("def test_uses_crds(crd_files):\n    pass\n")
    (pytester.path / "kube_platforms" / "test_crd.py").write_text(
        "from .conftest import crd_files\n\ndef test_uses_crds():\n    crd_files()\n"
    )
    if ci:
        monkeypatch.setenv("CI", "true")
    else:
        monkeypatch.delenv("CI", raising=False)
    result = _run(pytester, "-rfE")
    if ci:
        result.assert_outcomes(failed=1, errors=1)
        result.stdout.fnmatch_lines(
            [
                "FAILED kube_platforms/test_crd.py::test_uses_crds - This test skipped under CI=true: *CRDs*",
                "ERROR k8s/test_crd.py::test_uses_crds - This test skipped under CI=true: *CRDs*",
            ],
            consecutive=False,
        )
    else:
        result.assert_outcomes(skipped=2)
