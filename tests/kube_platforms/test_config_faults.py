"""The smaller faults of issue 13 (#5, #7): configuration mistakes said clearly, and a cluster without the
platform's CRDs reported as the user's setup problem (the CLI exits 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nni_ts.config.loader import config_from_dict
from nni_ts.errors import ConfigError, UserError
from nni_ts.platforms.kubernetes.kubeflow import KubeflowTrainingService
from nni_ts.testing.k8s import FakeCluster

from .conftest import kubeflow_config


def _v1(worker: dict[str, Any], **kubeflow: Any) -> dict[str, Any]:
    return {
        "trainingServicePlatform": "kubeflow",
        "searchSpacePath": str(SEARCH_SPACE),
        "trialConcurrency": 1,
        "tuner": {"builtinTunerName": "TPE"},
        "trial": {"codeDir": ".", "worker": worker},
        "kubeflowConfig": {"operator": "tf-operator", "nfs": {"server": "10.0.0.1", "path": "/nfs"}, **kubeflow},
    }


SEARCH_SPACE = Path(__file__).resolve().parents[1] / "config" / "seeds" / "search_space_tf.json"
WORKER = {"replicas": 1, "command": "python3 t.py", "cpuNum": 1, "memoryMB": 1024, "image": "python:3.11"}


def test_a_missing_v1_image_is_an_error_not_msranni_latest() -> None:
    worker = {k: v for k, v in WORKER.items() if k != "image"}
    with pytest.raises(ConfigError) as info:
        config_from_dict(_v1(worker), base_dir=Path("."))
    assert "trial.worker.image" in str(info.value) and "required" in str(info.value)


@pytest.mark.parametrize("image", ["", " "])
def test_an_empty_image_is_refused(image: str) -> None:
    """Issue 13 #5: ``image: ''`` passed validation, and the operator then could not create the pods."""
    with pytest.raises(ConfigError) as info:
        config_from_dict(_v1(dict(WORKER, image=image)), base_dir=Path("."))
    assert "trial.worker.image" in str(info.value)


def test_v1_errors_name_the_v1_section() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(_v1(WORKER, operator="mxnet-operator"), base_dir=Path("."))
    message = str(info.value)
    assert "kubeflowConfig.operator" in message and "localConfig" not in message, message


def test_a_bad_memory_size_is_said_once() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(_v1(dict(WORKER, memoryMB="lots")), base_dir=Path("."))
    assert str(info.value).count("'lots'") == 1, str(info.value)


async def test_a_cluster_without_the_crds_is_a_user_error(tmp_path: Path, nfs_dir: Path) -> None:
    """Issue 13 #7: it exited 1 (a platform failure) instead of 2 (the user's setup to fix)."""
    async with FakeCluster(tmp_path / "bare", builtin_crds=False) as bare:
        code = tmp_path / "code"
        code.mkdir()
        svc = KubeflowTrainingService(
            kubeflow_config(bare, nfs_dir, code, "python3 t.py"), experiment_dir=tmp_path / "exp"
        )
        with pytest.raises(UserError) as info:
            await svc.start()
        assert "training operator" in str(info.value)
        await svc.clean_up()
