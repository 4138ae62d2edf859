"""Search spaces: validation paths, and NNI's sampling semantics (random and through Optuna)."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nni_ts.errors import SearchSpaceError
from nni_ts.search_space import grid, sample_random, suggest, validate_search_space

NESTED = {
    "optimizer": {
        "_type": "choice",
        "_value": [
            {
                "_name": "sgd",
                "lr": {"_type": "loguniform", "_value": [1e-4, 1e-1]},
                "momentum": {"_type": "uniform", "_value": [0, 1]},
            },
            {"_name": "adam", "lr": {"_type": "loguniform", "_value": [1e-5, 1e-2]}},
            {"_name": "none"},
        ],
    },
    "layers": {"_type": "randint", "_value": [1, 4]},
    "width": {"_type": "choice", "_value": [[16, 16], [32, 64]]},
}


@pytest.mark.parametrize(
    ("space", "path", "words"),
    [
        ([], "searchSpace", ["mapping"]),
        ({}, "searchSpace", ["empty"]),
        ({"a": 1}, "searchSpace.a", ["_type"]),
        ({"a": {"_type": "uniform"}}, "searchSpace.a", ["_value is missing"]),
        ({"a": {"_type": "uniform", "_value": [1, 0]}}, "searchSpace.a._value", ["low < high"]),
        ({"a": {"_type": "uniform", "_value": [0, "1"]}}, "searchSpace.a._value", ["uniform expects"]),
        ({"a": {"_type": "quniform", "_value": [0, 1]}}, "searchSpace.a._value", ["[low, high, q]"]),
        ({"a": {"_type": "quniform", "_value": [0, 1, 0]}}, "searchSpace.a._value", ["q > 0"]),
        ({"a": {"_type": "loguniform", "_value": [0, 1]}}, "searchSpace.a._value", ["0 < low"]),
        ({"a": {"_type": "randint", "_value": [0.5, 3]}}, "searchSpace.a._value", ["integers"]),
        ({"a": {"_type": "randint", "_value": [3, 3]}}, "searchSpace.a._value", ["lower < upper"]),
        ({"a": {"_type": "normal", "_value": [0, -1]}}, "searchSpace.a._value", ["sigma > 0"]),
        ({"a": {"_type": "choice", "_value": []}}, "searchSpace.a._value", ["at least one"]),
        ({"a": {"_type": "choice", "_value": "abc"}}, "searchSpace.a._value", ["list"]),
        ({"a": {"_type": "uniform", "_value": [0, 1], "_min": 0}}, "searchSpace.a", ["unknown keys"]),
        (
            {"a": {"_type": "choice", "_value": [{"_name": "x", "lr": {"_type": "uniform", "_value": [2, 1]}}]}},
            "searchSpace.a._value[0].lr._value",
            ["low < high"],
        ),
        ({"a": {"_type": "choice", "_value": [{"_name": "x"}, {"_name": "x"}]}}, "searchSpace.a._value", ["distinct"]),
    ],
)
def test_validation_names_the_path(space: Any, path: str, words: list[str]) -> None:
    with pytest.raises(SearchSpaceError) as exc:
        validate_search_space(space, source="ss.json")
    assert exc.value.path == path
    assert str(exc.value).startswith(f"ss.json: at {path}: ")
    for w in words:
        assert w in str(exc.value)


finite = st.floats(-1e3, 1e3, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(low=finite, width=st.floats(1e-3, 1e3), q=st.floats(1e-3, 50), seed=st.integers(0, 2**32))
def test_quniform_is_rounded_and_clipped(low: float, width: float, q: float, seed: int) -> None:
    high = low + width
    space = {"x": {"_type": "quniform", "_value": [low, high, q]}}
    x = sample_random(space, random.Random(seed))["x"]
    assert low <= x <= high
    on_grid = math.isclose(x / q, round(x / q), abs_tol=1e-6)
    assert on_grid or x in (low, high)


@settings(max_examples=200, deadline=None)
@given(lower=st.integers(-100, 100), span=st.integers(1, 50), seed=st.integers(0, 2**32))
def test_randint_excludes_upper(lower: int, span: int, seed: int) -> None:
    rng = random.Random(seed)
    values = {sample_random({"n": {"_type": "randint", "_value": [lower, lower + span]}}, rng)["n"] for _ in range(60)}
    assert all(isinstance(v, int) and lower <= v < lower + span for v in values)


def test_every_type_samples_within_its_semantics() -> None:
    rng = random.Random(0)
    space = {
        "u": {"_type": "uniform", "_value": [2, 3]},
        "lu": {"_type": "loguniform", "_value": [1e-3, 1]},
        "qlu": {"_type": "qloguniform", "_value": [1, 1000, 10]},
        "n": {"_type": "normal", "_value": [5, 0.1]},
        "qn": {"_type": "qnormal", "_value": [0, 10, 4]},
        "ln": {"_type": "lognormal", "_value": [0, 0.5]},
        "qln": {"_type": "qlognormal", "_value": [2, 0.5, 3]},
    }
    samples = [sample_random(space, rng) for _ in range(500)]
    assert all(2 <= s["u"] <= 3 for s in samples)
    assert all(1e-3 <= s["lu"] <= 1 for s in samples)
    assert all(1 <= s["qlu"] <= 1000 and (s["qlu"] % 10 == 0 or s["qlu"] in (1, 1000)) for s in samples)
    assert 4.9 < sum(s["n"] for s in samples) / 500 < 5.1
    assert all(s["qn"] % 4 == 0 for s in samples)  # no clipping for the normal family
    assert all(s["ln"] > 0 for s in samples)
    assert all(s["qln"] % 3 == 0 for s in samples)
    small = sum(1 for s in samples if s["lu"] < 0.0316)  # log-uniform: half the mass below the geometric mean
    assert 180 < small < 320


def test_nested_choice_samples_sub_parameters() -> None:
    rng = random.Random(1)
    seen = set()
    for _ in range(200):
        s = sample_random(NESTED, rng)
        opt = s["optimizer"]
        seen.add(opt["_name"])
        if opt["_name"] == "sgd":
            assert set(opt) == {"_name", "lr", "momentum"} and 1e-4 <= opt["lr"] <= 1e-1
        elif opt["_name"] == "adam":
            assert set(opt) == {"_name", "lr"} and 1e-5 <= opt["lr"] <= 1e-2
        else:
            assert opt == {"_name": "none"}
        assert s["width"] in ([16, 16], [32, 64]) and 1 <= s["layers"] < 4
    assert seen == {"sgd", "adam", "none"}


def test_suggest_through_optuna_keeps_the_semantics() -> None:
    space = {
        **NESTED,
        "q": {"_type": "quniform", "_value": [0, 1, 0.25]},
        "qn": {"_type": "qnormal", "_value": [0, 1, 0.5]},
        "ln": {"_type": "lognormal", "_value": [0, 1]},
    }
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    for _ in range(30):
        trial = study.ask()
        s = suggest(space, trial)
        assert s["q"] in (0, 0.25, 0.5, 0.75, 1.0)
        assert s["qn"] % 0.5 == 0 and s["ln"] > 0
        assert s["width"] in ([16, 16], [32, 64])
        assert 1 <= s["layers"] <= 3 and isinstance(s["layers"], int)
        if s["optimizer"]["_name"] == "sgd":
            assert set(s["optimizer"]) == {"_name", "lr", "momentum"}
        study.tell(trial, s["layers"])
    names = {n for t in study.trials for n in t.params}
    assert "optimizer/sgd/lr" in names or "optimizer/adam/lr" in names  # nested names do not clash


def test_grid_enumerates_discrete_spaces() -> None:
    space = {
        "a": {"_type": "choice", "_value": [1, 2]},
        "b": {"_type": "randint", "_value": [0, 3]},
        "c": {"_type": "quniform", "_value": [0, 1, 0.5]},
    }
    points = list(grid(space))
    assert len(points) == 2 * 3 * 3
    assert {"a": 2, "b": 2, "c": 1.0} in points
    nested = list(
        grid(
            {
                "o": {
                    "_type": "choice",
                    "_value": [{"_name": "x", "k": {"_type": "randint", "_value": [0, 2]}}, {"_name": "y"}],
                }
            }
        )
    )
    assert nested == [{"o": {"_name": "x", "k": 0}}, {"o": {"_name": "x", "k": 1}}, {"o": {"_name": "y"}}]
    with pytest.raises(SearchSpaceError, match="GridSearch needs a finite set"):
        list(grid({"u": {"_type": "uniform", "_value": [0, 1]}}))


def test_randint_with_floats_and_a_non_json_choice_are_refused_as_nni_does() -> None:
    from nni_ts.errors import SearchSpaceError
    from nni_ts.search_space import validate_search_space

    with pytest.raises(SearchSpaceError) as exc:
        validate_search_space({"a": {"_type": "randint", "_value": [1.0, 2.0]}})
    assert exc.value.path == "searchSpace.a._value" and "integers" in str(exc.value)
    with pytest.raises(SearchSpaceError) as exc:
        validate_search_space({"c": {"_type": "choice", "_value": [1, object()]}})
    assert exc.value.path == "searchSpace.c._value[1]" and "JSON" in str(exc.value)
    validate_search_space({"c": {"_type": "choice", "_value": [1, "a", None, True, [1, 2], {"k": 1}]}})


def test_a_search_space_file_with_a_trailing_comma_loads_as_in_nni(tmp_path: Path) -> None:
    from nni_ts.config.loader import config_from_dict

    (tmp_path / "space.json").write_text('{\n "x": {"_type": "uniform", "_value": [0, 1]},\n}\n')
    cfg = config_from_dict(
        {
            "searchSpaceFile": str(tmp_path / "space.json"),
            "trialCommand": "true",
            "trialConcurrency": 1,
            "tuner": {"name": "TPE"},
            "trainingService": {"platform": "local"},
        }
    )
    assert cfg.search_space == {"x": {"_type": "uniform", "_value": [0, 1]}}
