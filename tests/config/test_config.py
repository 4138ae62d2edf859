"""Experiment config files: NNI v2 and v1 (the seeds' files among them), paths, and precise errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import pydantic
import pytest
import yaml

from nni_ts.config import LocalConfig, TrainingServiceConfig
from nni_ts.config.experiment import ExperimentConfig, parse_duration
from nni_ts.config.frameworkcontroller import FrameworkControllerConfig
from nni_ts.config.kubeflow import KubeflowConfig
from nni_ts.config.kubernetes import parse_memory_mb
from nni_ts.config.loader import config_from_dict, load_experiment_config
from nni_ts.config.remote import RemoteConfig
from nni_ts.errors import ConfigError
from nni_ts.registry import _registered, register_platform
from nni_ts.training_service import TrainingService

SEEDS = Path(__file__).parent / "seeds"
ROOT = Path(__file__).resolve().parents[2]
SPACE = {"lr": {"_type": "loguniform", "_value": [1e-4, 0.1]}}


def _write(tmp_path: Path, name: str, data: Any) -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _v2(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "searchSpace": SPACE,
        "trialCommand": "python3 trial.py",
        "trialConcurrency": 2,
        "tuner": {"name": "TPE", "classArgs": {"optimize_mode": "maximize"}},
        "trainingService": {"platform": "local"},
    }
    cfg.update(over)
    return cfg


# ---------------------------------------------------------------------- the seeds' files


def test_seed_kubeflow_tf_config_loads(tmp_path: Path) -> None:
    shutil.copy(SEEDS / "config-kubeflow-tf.yml", tmp_path)
    shutil.copy(SEEDS / "search_space_tf.json", tmp_path)
    cfg = load_experiment_config(tmp_path / "config-kubeflow-tf.yml")
    ts = cfg.training_service
    assert isinstance(ts, KubeflowConfig)
    assert ts.operator == "tf-operator" and ts.api_version == "v1"
    assert ts.storage.storage_type == "nfs" and ts.storage.server == "210.28.132.167"
    assert ts.storage.path == "/data/nfs/nni_storage"
    assert ts.worker is not None and ts.worker.replicas == 1 and ts.worker.command == "python3 mnist_tf.py"
    assert (ts.worker.gpu_number, ts.worker.cpu_number, ts.worker.memory_size) == (1, 1, 8192)
    assert ts.worker.docker_image == "msranni/nni:latest"
    assert cfg.max_experiment_seconds == 3600 and cfg.max_trial_number == 5
    assert cfg.nni_manager_ip == "210.28.132.167" and ts.nni_manager_ip == "210.28.132.167"
    assert cfg.tuner is not None and cfg.tuner.name == "TPE"
    assert cfg.search_space is not None and set(cfg.search_space) == {
        "dropout_rate",
        "conv_size",
        "hidden_size",
        "batch_size",
        "learning_rate",
    }
    assert cfg.trial_code_directory == str(tmp_path)


def test_seed_frameworkcontroller_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    code = tmp_path / "nni" / "examples" / "trials" / "mnist-tfv1"
    code.mkdir(parents=True)
    shutil.copy(SEEDS / "search_space_tf.json", code / "search_space.json")
    shutil.copy(SEEDS / "config-frameworkcontroller-filled.yml", tmp_path / "fc.yml")
    cfg = load_experiment_config(tmp_path / "fc.yml")
    ts = cfg.training_service
    assert isinstance(ts, FrameworkControllerConfig)
    (role,) = ts.task_roles
    assert (role.name, role.task_number, role.command, role.memory_size) == ("worker", 1, "python3 mnist.py", 8192)
    policy = role.framework_attempt_completion_policy
    assert (policy.min_failed_task_count, policy.min_succeed_task_count) == (1, 1)  # v1 spelling accepted
    assert cfg.trial_code_directory == str(code)  # ~ expanded
    assert cfg.assessor is not None and cfg.assessor.name == "Medianstop"
    assert cfg.max_experiment_seconds == 36000


def test_seed_frameworkcontroller_azure_block_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    code = tmp_path / "nni" / "examples" / "trials" / "mnist-tfv1"
    code.mkdir(parents=True)
    shutil.copy(SEEDS / "search_space_tf.json", code / "search_space.json")
    text = (SEEDS / "config-frameworkcontroller-filled.yml").read_text()
    text = text[: text.index("frameworkcontrollerConfig:")] + (SEEDS / "fc-azure.block").read_text()
    cfg = load_experiment_config(_write(tmp_path, "fc-azure.yml", text))
    ts = cfg.training_service
    assert isinstance(ts, FrameworkControllerConfig)
    assert ts.service_account_name == "frameworkcontroller"
    assert (ts.storage.storage_type, ts.storage.azure_account, ts.storage.azure_share) == (
        "azureStorage",
        "myaccount",
        "nnishare",
    )
    assert (ts.storage.key_vault_name, ts.storage.key_vault_key) == ("myvault", "storagekey")


def test_seed_template_with_placeholders_is_a_precise_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The documentation's template keeps `{your_nfs_server}`, which YAML reads as a mapping."""
    monkeypatch.setenv("HOME", str(tmp_path))
    code = tmp_path / "nni" / "examples" / "trials" / "mnist-tfv1"
    code.mkdir(parents=True)
    shutil.copy(SEEDS / "search_space_tf.json", code / "search_space.json")
    shutil.copy(SEEDS / "config-frameworkcontroller-template.yml", tmp_path / "fc.yml")
    with pytest.raises(ConfigError) as exc:
        load_experiment_config(tmp_path / "fc.yml")
    msg = str(exc.value)
    assert "fc.yml" in msg and "trainingService.storage.server" in msg and "string" in msg


# ---------------------------------------------------------------------- v1 and v2 equivalence


def test_v1_and_v2_of_the_same_experiment_are_equal() -> None:
    base = ROOT / "examples" / "nni-compat"
    v1 = load_experiment_config(base / "config_v1.yml")
    v2 = load_experiment_config(base / "config_v2.yml")
    assert v1.model_dump() == v2.model_dump()


def test_v1_remote_converts(tmp_path: Path) -> None:
    (tmp_path / "ss.json").write_text(json.dumps(SPACE))
    (tmp_path / "keys").mkdir()
    v1 = {
        "authorName": "me",
        "experimentName": "r",
        "trialConcurrency": 2,
        "maxExecDuration": "2h",
        "maxTrialNum": 10,
        "trainingServicePlatform": "remote",
        "searchSpacePath": "ss.json",
        "tuner": {"builtinTunerName": "Random", "classArgs": {"seed": 1}},
        "trial": {"command": "python3 t.py", "codeDir": ".", "gpuNum": 1},
        "machineList": [
            {
                "ip": "10.0.0.1",
                "port": 2222,
                "username": "bob",
                "sshKeyPath": "keys/id_ed25519",
                "passphrase": "pw",
                "gpuIndices": "0,1",
                "maxTrialNumPerGpu": 2,
                "useActiveGpu": True,
                "pythonPath": "/opt/py/bin",
            },
            {"ip": "10.0.0.2", "username": "alice", "passwd": "secret"},
        ],
    }
    cfg = load_experiment_config(_write(tmp_path, "c.yml", v1))
    ts = cfg.training_service
    assert isinstance(ts, RemoteConfig)
    m0, m1 = ts.machine_list
    assert (m0.host, m0.port, m0.user, m0.ssh_passphrase) == ("10.0.0.1", 2222, "bob", "pw")
    assert m0.ssh_key_file == str(tmp_path / "keys" / "id_ed25519")
    assert (m0.gpu_indices, m0.max_trial_number_per_gpu, m0.use_active_gpu) == ([0, 1], 2, True)
    assert (m1.host, m1.port, m1.user, m1.password) == ("10.0.0.2", 22, "alice", "secret")
    assert "secret" not in repr(m1)  # no secret in a log
    assert cfg.trial_gpu_number == 1 and ts.trial_gpu_number == 1
    assert ts.trial_command == "python3 t.py"


def test_v1_local_config_and_custom_tuner(tmp_path: Path) -> None:
    (tmp_path / "ss.json").write_text(json.dumps(SPACE))
    v1 = {
        "trialConcurrency": 1,
        "trainingServicePlatform": "local",
        "searchSpacePath": "ss.json",
        "tuner": {
            "codeDir": "tuners",
            "classFileName": "my_tuner.py",
            "className": "MyTuner",
            "classArgs": {"optimize_mode": "minimize"},
        },
        "trial": {"command": "x", "codeDir": "."},
        "localConfig": {"gpuIndices": "1", "maxTrialNumPerGpu": 3, "useActiveGpu": False},
        "multiPhase": False,
    }
    cfg = load_experiment_config(_write(tmp_path, "c.yml", v1))
    assert cfg.tuner is not None and cfg.tuner.class_name == "my_tuner.MyTuner"
    assert cfg.tuner.code_directory == str(tmp_path / "tuners")
    ts = cfg.training_service
    assert isinstance(ts, LocalConfig) and ts.gpu_indices == [1] and ts.max_trial_number_per_gpu == 3


def test_v2_kubeflow_and_frameworkcontroller_forms() -> None:
    kf = config_from_dict(
        _v2(
            trialCommand=None,
            trainingService={
                "platform": "kubeflow",
                "operator": "pytorch-operator",
                "apiVersion": "v1",
                "storage": {"storageType": "nfs", "server": "nfs.local", "path": "/exports"},
                "master": {
                    "replicas": 1,
                    "command": "python3 m.py",
                    "gpuNumber": 0,
                    "cpuNumber": 1,
                    "memorySize": "2g",
                    "dockerImage": "python:3.11",
                },
                "worker": {
                    "replicas": 2,
                    "command": "python3 m.py",
                    "memorySize": "1024mb",
                    "dockerImage": "python:3.11",
                },
            },
        )
    )
    assert isinstance(kf.training_service, KubeflowConfig)
    assert kf.training_service.master is not None and kf.training_service.master.memory_size == 2048
    fc = config_from_dict(
        _v2(
            trialCommand=None,
            trainingService={
                "platform": "frameworkcontroller",
                "serviceAccountName": "fc",
                "storage": {"storageType": "nfs", "server": "nfs.local", "path": "/exports"},
                "taskRoles": [
                    {
                        "name": "worker",
                        "taskNumber": 2,
                        "command": "python3 w.py",
                        "memorySize": 512,
                        "dockerImage": "python:3.11",
                        "frameworkAttemptCompletionPolicy": {"minFailedTaskCount": 1, "minSucceedTaskCount": 2},
                    }
                ],
            },
        )
    )
    assert isinstance(fc.training_service, FrameworkControllerConfig)
    assert fc.training_service.task_roles[0].framework_attempt_completion_policy.min_succeed_task_count == 2


def test_stored_form_round_trips() -> None:
    cfg = config_from_dict(_v2(trainingService={"platform": "local", "gpuIndices": [0]}))
    again = config_from_dict(cfg.model_dump(mode="json", by_alias=True, exclude_none=True))
    assert again.model_dump() == cfg.model_dump()
    assert isinstance(again.training_service, LocalConfig)


def test_relative_paths_resolve_against_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "exp"
    sub.mkdir()
    (sub / "space.yml").write_text("lr: {_type: uniform, _value: [0, 1e-1]}\n")
    cfg = _v2(searchSpace=None, searchSpaceFile="space.yml", trialCodeDirectory="../code")
    monkeypatch.chdir(tmp_path)
    loaded = load_experiment_config(_write(sub, "c.yml", cfg))
    assert loaded.trial_code_directory == str(tmp_path / "code")
    assert loaded.search_space == {"lr": {"_type": "uniform", "_value": [0, 0.1]}}  # 1e-1 read as a float


# ---------------------------------------------------------------------- mistakes


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (_v2(trialConcurency=2), ["c.yml", "trialConcurency", "did you mean 'trialConcurrency'", "line"]),
        (_v2(trialConcurrency="two"), ["trialConcurrency", "integer"]),
        (_v2(trialConcurrency=0), ["trialConcurrency", "greater than or equal to 1"]),
        (_v2(maxExperimentDuration="1 hour"), ["maxExperimentDuration", "'30m'"]),
        (
            _v2(trainingService={"platform": "local", "gpuIndicess": [0]}),
            ["trainingService.gpuIndicess", "did you mean 'gpuIndices'"],
        ),
        (_v2(trainingService={"platform": "martian"}), ["trainingService.platform", "martian", "local"]),
        (_v2(trainingService=[{"platform": "local"}]), ["trainingService", "hybrid"]),
        (
            _v2(trainingService={"platform": "remote", "machineList": [{"host": "h", "user": "u", "port": 0}]}),
            ["trainingService.machineList[0].port", "greater than or equal to 1"],
        ),
        (
            _v2(trainingService={"platform": "remote", "machineList": [{"host": "h"}]}),
            ["trainingService.machineList[0].user", "missing"],
        ),
        (_v2(searchSpace={"lr": {"_type": "loguniform", "_value": [0, 1]}}), ["searchSpace.lr._value", "0 < low"]),
        (_v2(searchSpace={"lr": {"_type": "normall", "_value": [0, 1]}}), ["searchSpace.lr._type", "normal"]),
        (_v2(searchSpace=None), ["search space"]),
        (_v2(trialCommand=None), ["trialCommand", "required"]),
        (_v2(tuner={"name": "TPE", "className": "a.B"}), ["tuner", "exactly one"]),
        (_v2(useAnnotation=True), ["useAnnotation", "not supported"]),
        (
            {
                "trainingServicePlatform": "local",
                "trialConcurrency": 1,
                "searchSpacePath": "nope.json",
                "trial": {"command": "x"},
            },
            ["nope.json", "does not exist"],
        ),
        (
            {"trainingServicePlatform": "local", "trialConcurrency": 1, "trial": {"comand": "x"}},
            ["trial.comand", "Did you mean 'command'"],
        ),
        (
            {
                "trainingServicePlatform": "remote",
                "trialConcurrency": 1,
                "searchSpacePath": "ss.json",
                "trial": {"command": "x"},
                "machineList": [{"ip": "h", "username": "u", "port": "ssh"}],
            },
            ["machineList[0].port", "integer"],
        ),
        ("trialConcurrency: [1\n", ["c.yml", "line 2", "not valid YAML"]),
        ("", ["empty"]),
        ("- a\n- b\n", ["mapping"]),
    ],
)
def test_mistakes_name_the_file_the_key_and_the_expectation(tmp_path: Path, content: Any, expected: list[str]) -> None:
    (tmp_path / "ss.json").write_text(json.dumps(SPACE))
    with pytest.raises(ConfigError) as exc:
        load_experiment_config(_write(tmp_path, "c.yml", content))
    msg = str(exc.value)
    for word in expected:
        assert word in msg, f"{word!r} not in {msg!r}"
    assert "Traceback" not in msg


def test_several_mistakes_are_reported_together(tmp_path: Path) -> None:
    cfg = _v2(trialConcurrency=0, trainingService={"platform": "local", "maxTrialNumberPerGpu": 0})
    with pytest.raises(ConfigError) as exc:
        load_experiment_config(_write(tmp_path, "c.yml", cfg))
    assert "trialConcurrency" in str(exc.value) and "trainingService.maxTrialNumberPerGpu" in str(exc.value)


def test_durations_and_memory_sizes() -> None:
    assert parse_duration("1h") == 3600 and parse_duration("30m") == 1800 and parse_duration("1.5d") == 129600
    assert parse_duration(90) == 90 and parse_duration("90") == 90 and parse_duration("45s") == 45
    for bad in ("", "h", "-1h", "1w", 0, True):
        with pytest.raises(ConfigError):
            parse_duration(bad)  # type: ignore[arg-type]
    assert parse_memory_mb(8192) == 8192 and parse_memory_mb("8192") == 8192
    assert parse_memory_mb("8g") == parse_memory_mb("8gb") == parse_memory_mb("8Gi") == 8192
    assert parse_memory_mb("512mb") == 512
    for bad in ("lots", "-1g", 0, True):
        with pytest.raises(ValueError):
            parse_memory_mb(bad)


class _ThirdPartyConfig(TrainingServiceConfig):
    platform: str = "acme"
    queue: str


class _ThirdParty(TrainingService[_ThirdPartyConfig]):
    platform_name = "acme"
    config_class: ClassVar[type[TrainingServiceConfig]] = _ThirdPartyConfig

    async def _submit(self, detail: Any) -> None:
        raise NotImplementedError

    async def _cancel(self, detail: Any, status: Any) -> None:
        raise NotImplementedError


def test_third_party_platform_config_validates() -> None:
    register_platform("acme", _ThirdParty)
    try:
        cfg = config_from_dict(_v2(trainingService={"platform": "acme", "queue": "gpu"}))
        assert isinstance(cfg.training_service, _ThirdPartyConfig) and cfg.training_service.queue == "gpu"
        assert cfg.training_service.trial_command == "python3 trial.py"  # inherited
        with pytest.raises(ConfigError, match=r"trainingService\.queue"):
            config_from_dict(_v2(trainingService={"platform": "acme"}))
    finally:
        _registered.pop("acme", None)


def test_experiment_config_is_one_model() -> None:
    assert set(ExperimentConfig.model_fields) >= {"trial_concurrency", "training_service", "tuner", "assessor"}
    assert all(f.description for f in ExperimentConfig.model_fields.values())


def test_configuration_reference_is_current() -> None:
    """docs/configuration.md is generated from the models; regenerate it when a field changes."""
    from nni_ts.config.reference import render_reference

    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc == render_reference(), "run: python -m nni_ts.config.reference > docs/configuration.md"


@pytest.mark.parametrize("example", ["quickstart", "nni-compat", "remote", "kubeflow", "frameworkcontroller"])
def test_example_configs_load(example: str) -> None:
    for path in sorted((ROOT / "examples" / example).glob("config*.yml")):
        cfg = load_experiment_config(path)
        platform = cfg.training_service.platform
        assert platform == ("local" if example in ("quickstart", "nni-compat") else example)


def test_validation_errors_never_echo_secrets() -> None:
    from nni_ts.config.errors import format_validation_error

    class Machine(pydantic.BaseModel):
        host: str
        port: int
        password: int  # a secret-named field of the wrong type: its value must not be shown

    class Conf(pydantic.BaseModel):
        machines: list[Machine]

    with pytest.raises(pydantic.ValidationError) as info:
        Conf.model_validate(
            {
                "machines": [
                    {"host": "h", "port": 22, "password": "hunter2"},
                    {"host": "h", "port": 22, "password": 1, "extra": {"token": "tok-s3cret"}},
                    "not-a-mapping",
                    {"host": "h", "port": "x", "password": 1},
                ]
            }
        )
    text = format_validation_error(info.value)
    assert "machines[0].password" in text and "<hidden>" in text
    assert "hunter2" not in text
    assert "machines[3].port" in text and "'x'" in text  # other values are still shown
    with pytest.raises(pydantic.ValidationError) as info:
        Conf.model_validate({"machines": [[{"sshPassphrase": "pp-s3cret"}]]})
    assert "pp-s3cret" not in format_validation_error(info.value)


def test_remote_config_error_does_not_show_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(
            {
                "trialCommand": "python3 t.py",
                "searchSpace": {},
                "trainingService": {
                    "platform": "remote",
                    "machineList": [{"host": "h", "user": "u", "password": ["hunter2"], "port": "nope"}],
                },
            }
        )
    assert "hunter2" not in str(info.value)
    assert "port" in str(info.value)
