"""The light ``nni`` module, checked for what NNI's own SDK tests check (test_trial.py: parameters, ids,
records of every kind of value; merge_parameter; the tuner SDK), each in a real Python process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import trial_keeper
from trial_keeper.records import FrameDecoder

PARAMS = {"msg": "hi", "x": 123, "dict": {"key": "value", "y": None}}


def run_py(
    code: str, tmp_path: Path, *, platform: str | None = "local", **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with the light nni, as a trial of experiment ``test_experiment`` would be run."""
    full = dict(os.environ, PYTHONPATH=trial_keeper.LIGHT_NNI_PATH, NNI_TS_LIGHT_NNI="1")
    for key in ("NNI_PLATFORM", "NNI_SYS_DIR", "NNI_TRIAL_JOB_ID", "NNI_EXP_ID", "NNI_TRIAL_SEQ_ID"):
        full.pop(key, None)
    if platform is not None:
        (tmp_path / "parameter.cfg").write_text(json.dumps({"parameter_id": "test_param", "parameters": PARAMS}))
        full.update(
            NNI_PLATFORM=platform,
            NNI_SYS_DIR=str(tmp_path),
            NNI_OUTPUT_DIR=str(tmp_path),
            NNI_TRIAL_JOB_ID="test_trial_job_id",
            NNI_EXP_ID="test_experiment",
            NNI_TRIAL_SEQ_ID="7",
        )
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True, text=True, timeout=60
    )


def records(tmp_path: Path) -> list[dict[str, Any]]:
    data = (tmp_path / ".nni" / "metrics").read_bytes()
    return [json.loads(r) for r in FrameDecoder().feed(data)]


def test_parameters_ids_and_the_second_call(tmp_path: Path) -> None:
    proc = run_py(
        """
        import json, nni
        first = nni.get_next_parameter()
        second = nni.get_next_parameter()
        print(json.dumps([first, second, nni.get_current_parameter("x"), nni.get_current_parameter(),
                          nni.get_experiment_id(), nni.get_trial_id(), nni.get_sequence_id()]))
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    first, second, x, current, exp, trial, seq = json.loads(proc.stdout)
    assert first == PARAMS and second is None  # one parameter set per trial, as NNI
    assert x == 123 and current == PARAMS
    assert (exp, trial, seq) == ("test_experiment", "test_trial_job_id", 7)


def test_records_of_numbers_objects_and_numpy(tmp_path: Path) -> None:
    proc = run_py(
        """
        import nni, nni.trial, numpy as np
        nni.get_next_parameter()
        nni.trial.overwrite_intermediate_seq(0)
        nni.report_intermediate_result(123)
        nni.report_intermediate_result(np.float32(0.25))
        nni.report_intermediate_result(["obj1", {"key1": "v1", "k2": None}, 233, 0.456])
        nni.report_final_result(np.array([[1, 2, 3], [4, 5, 6]]))
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    got = records(tmp_path)
    assert [(r["type"], r["sequence"], r["parameter_id"], r["trial_job_id"]) for r in got] == [
        ("PERIODICAL", 0, "test_param", "test_trial_job_id"),
        ("PERIODICAL", 1, "test_param", "test_trial_job_id"),
        ("PERIODICAL", 2, "test_param", "test_trial_job_id"),
        ("FINAL", 0, "test_param", "test_trial_job_id"),
    ]
    # The value is JSON text inside the record, as NNI's SDK writes it.
    assert [json.loads(r["value"]) for r in got] == [
        123,
        0.25,
        ["obj1", {"key1": "v1", "k2": None}, 233, 0.456],
        [[1, 2, 3], [4, 5, 6]],
    ]


def test_other_platforms_get_records_on_stdout(tmp_path: Path) -> None:
    proc = run_py("import nni\nnni.get_next_parameter()\nnni.report_final_result(0.5)\n", tmp_path, platform="remote")
    assert proc.returncode == 0, proc.stderr
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("NNISDK_MEb'")]
    assert json.loads(json.loads(line[len("NNISDK_MEb'") : -1])["value"]) == 0.5


def test_standalone_mode(tmp_path: Path) -> None:
    """Run by hand: empty parameters (every call, as NNI's standalone channel), results printed."""
    proc = run_py(
        """
        import nni
        print(nni.get_next_parameter(), nni.get_next_parameter())
        nni.report_intermediate_result(0.5)
        nni.report_final_result({"default": 0.9, "loss": 0.1})
        print(nni.get_experiment_id(), nni.get_trial_id(), nni.get_sequence_id())
        """,
        tmp_path,
        platform=None,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "{} {}",
        "[nni] Intermediate result: 0.5  (Index 0)",
        '[nni] Final result: {"default": 0.9, "loss": 0.1}',
        "STANDALONE STANDALONE 0",
    ]
    assert "without an experiment" in proc.stderr
    assert not (tmp_path / ".nni").exists()


def test_merge_parameter_converts_as_nni_does(tmp_path: Path) -> None:
    proc = run_py(
        """
        import argparse, json
        from nni.utils import merge_parameter

        out = []
        ns = argparse.Namespace(dropout=0.5, layers=2, name="a", opt=None, flag=False)
        merge_parameter(ns, {"dropout": 1, "layers": True, "opt": [1], "flag": True})
        out.append([ns.dropout, type(ns.dropout).__name__, ns.layers, ns.opt, ns.flag])
        d = merge_parameter({"lr": 0.1}, {"lr": 0})
        out.append([d["lr"], type(d["lr"]).__name__])
        out.append(merge_parameter({"a": 1}, None))
        for base, override in (({"lr": 0.1}, {"lr": "0.2"}), ({"n": 1}, {"n": 1.5}), ({"a": 1}, {"b": 2})):
            try:
                merge_parameter(base, override)
                out.append("accepted")
            except ValueError as exc:
                out.append(str(exc))
        print(json.dumps(out))
        """,
        tmp_path,
        platform=None,
    )
    assert proc.returncode == 0, proc.stderr
    conv, d, same, bad_str, bad_float, missing = json.loads(proc.stdout)
    assert conv == [1.0, "float", True, [1], True]  # int -> float; a bool is an int; None takes anything
    assert d == [0.0, "float"] and same == {"a": 1}
    assert bad_str == 'Expected "lr" in override parameters to have type float, but found str'
    assert bad_float == 'Expected "n" in override parameters to have type int, but found float'
    assert missing == "Key 'b' not found in base parameters."


def test_the_rest_of_the_trial_and_tuner_sdk(tmp_path: Path) -> None:
    proc = run_py(
        """
        import json, nni, nni.trial, nni.typehint
        from nni.assessor import Assessor, AssessResult
        from nni.tuner import Tuner
        from nni.utils import ClassArgsValidator, OptimizeMode, extract_scalar_reward, extract_scalar_history

        @nni.trace
        class Model:
            def __init__(self, size):
                self.size = size

        @nni.trace()
        def build():
            return 3

        class Mine(Tuner):
            def update_search_space(self, search_space):
                self.space = search_space

        out = {
            "version": nni.__version__,
            "trace": [Model(4).size, build(), Model.__name__],
            "scalar": [extract_scalar_reward(2), extract_scalar_reward({"default": 0.5, "x": 1}),
                       extract_scalar_history([1, {"default": 2}])],
            "mode": OptimizeMode("minimize").name,
            "assess": [AssessResult.Good.value, AssessResult.Bad.value, issubclass(Assessor, object)],
            "no_more": str(nni.NoMoreTrialError()),
            "trial_api": sorted(nni.trial.__all__),
            "hint": nni.typehint.TrialMetric.__name__,
        }
        try:
            extract_scalar_reward({"loss": 1})
        except RuntimeError as exc:
            out["bad"] = "default" in str(exc)
        try:
            Mine().generate_parameters(0)
        except NotImplementedError:
            out["abstract"] = True
        ClassArgsValidator().choices("optimize_mode", "maximize", "minimize")("maximize")
        print(json.dumps(out))
        """,
        tmp_path,
        platform=None,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "nnits" in out["version"] and out["version"].startswith("3.0")
    assert out["trace"] == [4, 3, "Model"]
    assert out["scalar"] == [2, 0.5, [1, 2]] and out["bad"] is True
    assert out["mode"] == "Minimize" and out["assess"] == [True, False, True]
    assert out["no_more"] == "Search space fully explored" and out["abstract"] is True
    assert "get_next_parameter" in out["trial_api"] and "report_final_result" in out["trial_api"]
    assert out["hint"] == "float"


def test_light_module_files_run_on_python_3_8_syntax() -> None:
    import ast

    for path in Path(trial_keeper.LIGHT_NNI_PATH).rglob("*.py"):
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 8))
