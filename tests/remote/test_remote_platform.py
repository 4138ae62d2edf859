"""The remote platform's features against real sshd hosts: quoting, GPUs, code upload, resume, direct mode."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest
from remote_support import Recorder, machine, make_code, make_service, wait_metrics, wait_status

from nni_ts.config.loader import load_experiment_config
from nni_ts.models import TrialJobStatus
from nni_ts.platforms.remote import IgnoreRules, build_archive
from nni_ts.testing.conformance import form, wait_for_status
from nni_ts.testing.sshd import SshdCluster

pytestmark = pytest.mark.slow  # seconds per test (a real sshd): scripts/test --fast leaves it out


async def test_quotes_and_substitutions_in_paths_and_commands(sshd_cluster: SshdCluster, tmp_path: Path) -> None:
    canary = tmp_path / f"pwned-{uuid.uuid4().hex}"
    evil = f'it\'s "q" $(touch {canary}) `touch {canary}`;\ntouch {canary}'
    code = make_code(tmp_path, f"code {evil}")
    hosts = [machine(h, workDirectory=str(h.work_dir / evil)) for h in sshd_cluster.hosts]
    svc = make_service(sshd_cluster, code, tmp_path / "exp", hosts=hosts, trialCommand="python3 'trial.py' # it's")
    async with svc:
        rec = Recorder(svc)
        f = form({"x": evil}, 0)
        f.env = {"EVIL": evil}
        trials = [await svc.submit_trial_job(f), await svc.submit_trial_job(form({"y": evil}, 1))]
        for t in trials:
            done = await wait_for_status(svc, t.id, timeout=30)
            assert done.status is TrialJobStatus.SUCCEEDED, done.message
            assert evil in done.platform_data["trial_dir"]
            assert len(rec.values(t.id)) == 3
    assert not canary.exists()


async def test_gpu_scheduling(sshd_cluster: SshdCluster, tmp_path: Path) -> None:
    host0, host1 = sshd_cluster.hosts
    host0.set_gpus([(0, 0, 16000, 0), (1, 0, 16000, 0), (2, 5000, 16000, 90)])  # GPU 2 is busy
    host1.set_gpus(None)  # no driver: CPU only
    release = tmp_path / "release"
    hosts = [machine(host0, gpuIndices="1,2", maxTrialNumberPerGpu=2), machine(host1)]
    svc = make_service(sshd_cluster, make_code(tmp_path), tmp_path / "exp", hosts=hosts, trialGpuNumber=1)
    async with svc:
        rec = Recorder(svc)
        trials = [await svc.submit_trial_job(form({"release": str(release)}, i)) for i in range(3)]
        # Only GPU 1 may be used (GPU 0 is not in gpuIndices, GPU 2 is active), by two trials at once.
        await wait_metrics(rec, trials[0].id, 1)
        await wait_metrics(rec, trials[1].id, 1)
        assert (await svc.get_trial_job(trials[2].id)).status is TrialJobStatus.WAITING
        release.touch()
        for t in trials:
            done = await wait_for_status(svc, t.id, timeout=30)
            assert done.status is TrialJobStatus.SUCCEEDED, done.message
            assert done.platform_data["machine"] == 0 and done.platform_data["gpus"] == [1]
            assert rec.values(t.id)[-1]["cvd"] == "1"
    svc = make_service(sshd_cluster, make_code(tmp_path), tmp_path / "exp2", hosts=hosts, trialGpuNumber=2)
    async with svc:
        t = await svc.submit_trial_job(form({}))
        done = await wait_for_status(svc, t.id, timeout=30)
        assert done.status is TrialJobStatus.FAILED and "needs 2 GPU(s)" in (done.message or "")
    svc = make_service(sshd_cluster, make_code(tmp_path), tmp_path / "exp3", hosts=hosts)
    async with svc:
        rec = Recorder(svc)
        t = await svc.submit_trial_job(form({}))
        assert (await wait_for_status(svc, t.id, timeout=30)).status is TrialJobStatus.SUCCEEDED
        assert rec.values(t.id)[-1]["cvd"] == ""


def test_nniignore_rules() -> None:
    rules = IgnoreRules(["# comment", "", "*.log", "!keep.log", "data/", "/top.txt", "a/**/z", "build?", "\\#hash"])
    assert rules.ignored("x.log", False) and rules.ignored("deep/x.log", False)
    assert not rules.ignored("keep.log", False)
    assert rules.ignored("data", True) and not rules.ignored("data", False) and rules.ignored("sub/data", True)
    assert rules.ignored("top.txt", False) and not rules.ignored("sub/top.txt", False)
    assert rules.ignored("a/z", False) and rules.ignored("a/b/c/z", False) and not rules.ignored("b/a/z", False)
    assert rules.ignored("build1", True) and not rules.ignored("build12", True)
    assert rules.ignored("#hash", False)
    assert not rules.ignored(".hidden", False)


async def test_code_upload_nniignore_dotfiles_and_cache(
    sshd_cluster: SshdCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    code = make_code(tmp_path)
    (code / ".nniignore").write_text("data/\n*.ckpt\n")
    (code / ".hidden").write_text("dot")
    (code / "data").mkdir()
    (code / "data" / "big.bin").write_bytes(b"0" * 1000)
    (code / "model.ckpt").write_text("x")
    archive = build_archive(code)
    assert archive.files == 3  # trial.py, .nniignore, .hidden
    host0 = sshd_cluster.hosts[0]
    with caplog.at_level(logging.INFO, logger="nni_ts.platforms.remote"):
        for run in range(2):
            svc = make_service(sshd_cluster, code, tmp_path / f"exp{run}", hosts=[machine(host0)])
            async with svc:
                rec = Recorder(svc)
                t = await svc.submit_trial_job(form({}))
                done = await wait_for_status(svc, t.id, timeout=30)
                assert done.status is TrialJobStatus.SUCCEEDED, done.message
                assert rec.values(t.id)[-1]["files"] == [".hidden", ".nni-ts-complete", ".nniignore", "trial.py"]
            uploads = [r for r in caplog.records if "Uploaded the trial code" in r.getMessage()]
            assert len(uploads) == 1, "the second experiment reuses the uploaded code"
    assert any("already has the trial code" in r.getMessage() for r in caplog.records)


async def test_resume_reattaches_to_a_running_trial(sshd_cluster: SshdCluster, tmp_path: Path) -> None:
    release = tmp_path / "release"
    code = make_code(tmp_path)
    first = make_service(sshd_cluster, code, tmp_path / "exp", experiment_id="resumeme")
    await first.start()
    rec = Recorder(first)
    t = await first.submit_trial_job(form({"release": str(release)}))
    await wait_metrics(rec, t.id, 1)
    await wait_status(first, t.id, TrialJobStatus.RUNNING)
    saved = await first.get_trial_job(t.id)
    assert saved.platform_data["keeper_pid"]
    await first._shutdown()  # the manager dies: connections and server gone, the trial runs on
    second = make_service(sshd_cluster, code, tmp_path / "exp", experiment_id="resumeme")
    async with second:
        rec2 = Recorder(second)
        await second.reattach_trial_job(saved, metrics_delivered=1)
        release.touch()
        done = await wait_for_status(second, t.id, timeout=30)
        assert done.status is TrialJobStatus.SUCCEEDED, done.message
        assert rec2.values(t.id)[0] == 2 and len(rec2.values(t.id)) == 2  # only what came after


async def test_direct_reporting_and_pre_command(sshd_cluster: SshdCluster, tmp_path: Path) -> None:
    hosts = [machine(h, preCommand='export PRE_VAR="it\'s set"') for h in sshd_cluster.hosts]
    svc = make_service(
        sshd_cluster,
        make_code(tmp_path),
        tmp_path / "exp",
        hosts=hosts,
        keeperReporting="direct",
        nniManagerIp="127.0.0.1",
    )
    async with svc:
        rec = Recorder(svc)
        trials = [await svc.submit_trial_job(form({}, i)) for i in range(2)]
        for t in trials:
            done = await wait_for_status(svc, t.id, timeout=30)
            assert done.status is TrialJobStatus.SUCCEEDED, done.message
            assert rec.values(t.id)[-1]["pre"] == "it's set"
        assert svc.server.host == "127.0.0.1"


def test_v1_machine_list_with_pre_command(tmp_path: Path) -> None:
    (tmp_path / "space.json").write_text(json.dumps({"x": {"_type": "choice", "_value": [1]}}))
    (tmp_path / "config.yml").write_text(
        "authorName: a\nexperimentName: e\ntrialConcurrency: 1\nmaxTrialNum: 1\ntrainingServicePlatform: remote\n"
        "searchSpacePath: space.json\ntuner:\n  builtinTunerName: Random\n"
        "trial:\n  codeDir: .\n  command: python3 t.py\n  gpuNum: 0\n"
        "machineList:\n  - ip: 10.0.0.1\n    username: u\n    passwd: secret-pw\n"
        "    preCommand: source ~/venv/bin/activate\n"
    )
    config = load_experiment_config(tmp_path / "config.yml")
    machine0 = config.training_service.machine_list[0]  # type: ignore[union-attr]
    assert machine0.pre_command == "source ~/venv/bin/activate" and machine0.host == "10.0.0.1"
    assert "secret-pw" not in repr(config)


def test_secrets_are_not_echoed_by_config_errors() -> None:
    from nni_ts.errors import ConfigError
    from nni_ts.platforms.remote import RemoteTrainingService

    secret = "s3cret-never-shown"
    for key in ("password", "passphrase"):
        with pytest.raises(ConfigError) as info:
            RemoteTrainingService({"platform": "remote", "machineList": [{"host": "h", "user": "u", key: [secret]}]})
        assert secret not in str(info.value) and key in str(info.value).lower()
    svc = RemoteTrainingService({"platform": "remote", "machineList": [{"host": "h", "user": "u", "password": 123456}]})
    assert svc.config.machine_list[0].password == "123456"
    assert "123456" not in repr(svc.config)


async def test_nni_style_machine_list_metadata() -> None:
    from nni_ts.platforms.remote import RemoteTrainingService

    svc = RemoteTrainingService({"platform": "remote", "machineList": [{"host": "h", "user": "u"}]})
    await svc.set_cluster_metadata(
        "machine_list",
        json.dumps([{"ip": "10.0.0.9", "port": 2222, "username": "bob", "passwd": "pw", "maxTrialNumPerGpu": 2}]),
    )
    m = svc.config.machine_list[0]
    assert (m.host, m.port, m.user, m.password, m.max_trial_number_per_gpu) == ("10.0.0.9", 2222, "bob", "pw", 2)
    shown = json.loads(await svc.get_cluster_metadata("machineList"))
    assert shown[0]["password"] == "***" and shown[0]["host"] == "10.0.0.9"


async def test_no_keeper_outlives_the_service(sshd_cluster: SshdCluster, tmp_path: Path) -> None:
    """Keepers whose last answer was lost as the service closed would retry for minutes: they are stopped."""
    from remote_support import wait_gone

    svc = make_service(sshd_cluster, make_code(tmp_path), tmp_path / "exp")
    async with svc:
        trials = [await svc.submit_trial_job(form({}, i)) for i in range(6)]
        done = [await wait_for_status(svc, t.id, timeout=30) for t in trials]
    assert all(d.status is TrialJobStatus.SUCCEEDED for d in done)
    for d in done:
        await wait_gone(d.platform_data["keeper_pid"], timeout=10)


def test_host_agent_is_python_3_8_and_stdlib_only() -> None:
    import ast

    import nni_ts.platforms.remote.agent as agent

    path = Path(agent.__file__)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 8))
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not any(name.startswith("nni_ts") for name in imported)
    for func in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):  # no 3.9+ generics at runtime
        for ann in [a.annotation for a in func.args.args] + [func.returns]:
            assert not (isinstance(ann, ast.Subscript) and getattr(ann.value, "id", "") in ("dict", "list"))
