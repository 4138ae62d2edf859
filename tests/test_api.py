"""The public surface: __all__ is complete and importable, lazy names resolve, errors chain."""

from __future__ import annotations

import pytest

import nni_ts
from nni_ts import errors


def test_all_names_resolve() -> None:
    for name in nni_ts.__all__:
        if name == "Experiment":
            continue  # resolved lazily; the experiment loop has its own tests
        assert getattr(nni_ts, name) is not None, name


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError):
        nni_ts.no_such_name  # noqa: B018


def test_errors_all_matches_module() -> None:
    exported = {
        n
        for n in dir(errors)
        if isinstance(getattr(errors, n), type)
        and issubclass(getattr(errors, n), Exception)
        and getattr(errors, n).__module__ == errors.__name__
    }
    assert exported == set(errors.__all__)
    assert all(issubclass(getattr(errors, n), errors.NniTsError) for n in errors.__all__)


def test_config_error_names_source_and_path() -> None:
    err = errors.ConfigError("expected an integer.", source="exp.yml", path="trainingService.machineList[0].port")
    assert str(err) == "exp.yml: at trainingService.machineList[0].port: expected an integer."
    assert isinstance(err, errors.UserError)
    assert str(errors.TrialNotFoundError("abc")) == "No trial job has the id 'abc'."


def test_platform_registry() -> None:
    from nni_ts.platforms.local import LocalTrainingService
    from nni_ts.registry import available_platforms, get_platform_class

    assert "local" in available_platforms()
    assert get_platform_class("local") is LocalTrainingService
    with pytest.raises(errors.ConfigError, match="installed platforms: .*local"):
        get_platform_class("nope")
