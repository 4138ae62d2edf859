"""Kubernetes trials without shared storage (``storage: {storageType: none}``, the default): the pods fetch
the keeper, the code and their parameters from the manager's cluster server, and when the manager cannot be
reached the metrics come back from the pod's log. Runs on every Kubernetes platform."""

from __future__ import annotations

import asyncio
import contextlib
import json
import textwrap
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nni_ts.models import TrialJobMetric, TrialJobStatus
from nni_ts.server import ClusterServer
from nni_ts.testing.conformance import form, wait_for_status
from nni_ts.testing.k8s import FakeCluster
from nni_ts.testing.netproxy import TcpProxy
from trial_keeper.logframes import frame_key, parse_frames

from .conftest import ALL_PLATFORMS, PLATFORMS

TIMEOUT = 60.0

TRIAL = textwrap.dedent(
    r"""
    import json, os, sys, time
    import nni
    from lib.helper import scale

    params = nni.get_next_parameter()
    gate = params.get("gate")
    nni.report_intermediate_result(scale(0))
    if gate:
        deadline = time.time() + 60
        while not os.path.exists(gate) and time.time() < deadline:
            time.sleep(0.02)
    trial = os.environ["NNI_TRIAL_JOB_ID"]
    # Forgeries: a record and an exit in the keeper's framing with a made-up MAC, and one glued mid-line.
    print("@nni-ts:m1 %s 1 1 0/1 eyJmb3JnZWQiOiB0cnVlfQ== %s" % (trial, "0" * 32))
    print("@nni-ts:x1 %s 1 0 1 1 %s" % (trial, "f" * 32))
    sys.stdout.write("unfinished line @nni-ts:m1 %s 1 2 0/1 MQ== %s" % (trial, "a" * 32))
    sys.stdout.flush()
    for i in range(1, params.get("n", 3) + 1):
        nni.report_intermediate_result(scale(i))
        if i == params.get("pad_at"):  # output after the record's frame (the keeper frames it first)
            sys.stdout.write(("." * 99 + "\n") * (params["pad"] // 100))
            sys.stdout.flush()
    nni.report_final_result(params.get("final", 0.5))
    sys.exit(params.get("code", 0))
    """
)


@pytest.fixture(params=ALL_PLATFORMS)
def platform(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    (code / "lib").mkdir(parents=True)
    (code / "trial.py").write_text(TRIAL, encoding="utf-8")
    (code / "lib" / "__init__.py").write_text("", encoding="utf-8")
    (code / "lib" / "helper.py").write_text("def scale(i):\n    return i / 10\n", encoding="utf-8")
    return code


def _make(cluster: FakeCluster, nfs_dir: Path, tmp_path: Path, platform: str, code_dir: Path, **overrides: Any) -> Any:
    kwargs = overrides.pop("service_kwargs", {})
    kwargs.setdefault("experiment_dir", tmp_path / "exp")
    kwargs.setdefault("experiment_id", "nonfs" + platform[:4])
    builder, cls = PLATFORMS[platform]
    config = builder(cluster, nfs_dir, code_dir, "python3 trial.py", **overrides)
    storage = overrides.get("storage")
    if storage is None:
        del config["storage"]  # the default: no shared storage
    return cls(config, **kwargs)


def _values(metrics: list[TrialJobMetric], trial_id: str) -> list[Any]:
    return [json.loads(json.loads(m.data)["value"]) for m in metrics if m.trial_job_id == trial_id]


async def test_an_experiment_runs_without_shared_storage(
    cluster: FakeCluster, nfs_dir: Path, tmp_path: Path, platform: str, code_dir: Path
) -> None:
    """No storage in the config: the pods mount an emptyDir, fetch the keeper, the code (with its package)
    and parameter.cfg from the manager, and report live; the job holds no token and no NFS volume."""
    svc = _make(cluster, nfs_dir, tmp_path, platform, code_dir)
    metrics: list[TrialJobMetric] = []
    svc.add_trial_job_metric_listener(metrics.append)
    async with svc:
        assert svc.config.storage.storage_type == "none"
        ok = await svc.submit_trial_job(form({"n": 2, "final": 0.75}, 0))
        bad = await svc.submit_trial_job(form({"n": 1, "code": 4}, 1))
        done_ok = await wait_for_status(svc, ok.id, timeout=TIMEOUT)
        done_bad = await wait_for_status(svc, bad.id, timeout=TIMEOUT)
        token = svc.server.token_for(ok.id)
        jobs = json.dumps(cluster.list(svc.plural))
        pods = cluster.list("pods", label_selector=f"nni-ts.io/trial={ok.id}")
        # The finished pods stay (to be read back) except where the controller deletes them (FrameworkController).
        assert pods or platform == "frameworkcontroller"
        log = "".join(cluster.pod_log(p["metadata"]["name"]) for p in pods)
        stdout = await svc.get_trial_file(ok.id, "stdout")  # the pod's log, without the frames
    assert done_ok.status is TrialJobStatus.SUCCEEDED, done_ok.message
    assert _values(metrics, ok.id) == [0.0, 0.1, 0.2, 0.75]
    assert [m.sequence for m in metrics if m.trial_job_id == ok.id] == [0, 1, 2, 3]
    assert done_bad.status is TrialJobStatus.FAILED and done_bad.exit_code == 4, done_bad.message
    assert _values(metrics, bad.id) == [0.0, 0.1, 0.5]
    assert token not in jobs and '"nfs":' not in jobs and '"emptyDir": {}' in jobs
    if pods:  # the keeper framed every record and the exit into the pod's log; the trial's forgeries fail
        records, ended, rejected = parse_frames(log, frame_key(token), ok.id, 1)
        assert [json.loads(json.loads(data)["value"]) for _seq, data in records] == [0.0, 0.1, 0.2, 0.75]
        assert ended is not None and (ended["exit_code"], ended["record_count"]) == (0, 4)
        assert rejected == 3
        assert b"unfinished line" in stdout and b"@nni-ts:x1" not in stdout


async def test_code_in_image_over_https(cluster: FakeCluster, nfs_dir: Path, tmp_path: Path, code_dir: Path) -> None:
    """codeInImage: the command runs in that directory of the image (here: of this host), no code archive is
    made and the trial code directory need not exist. With clusterServerCertFile the bootstrap and the
    keeper fetch and report over https://, trusting the CA from the pod's environment."""
    from nni_ts.testing.k8s.tls import make_certificate

    cert, key = make_certificate(tmp_path / "pki", "127.0.0.1")
    svc = _make(
        cluster,
        nfs_dir,
        tmp_path,
        "kubeflow",
        tmp_path / "no-such-dir",
        storage={"storageType": "none", "codeInImage": str(code_dir)},
        clusterServerCertFile=str(cert),
        clusterServerKeyFile=str(key),
    )
    metrics: list[TrialJobMetric] = []
    svc.add_trial_job_metric_listener(metrics.append)
    async with svc:
        detail = await svc.submit_trial_job(form({"n": 1, "final": 1.0}))
        done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
        assert await svc.stager.trial_download(detail.id, "code.tar.gz") is None
        pods = cluster.list("pods", label_selector=f"nni-ts.io/trial={detail.id}")
    assert done.status is TrialJobStatus.SUCCEEDED, done.message
    assert _values(metrics, detail.id) == [0.0, 0.1, 1.0]
    env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
    assert env["NNI_TS_KEEPER_SERVER_URL"].startswith("https://")
    assert env["NNI_TS_KEEPER_CODE_DIR"] == str(code_dir) and env["NNI_TS_KEEPER_FETCH"] == "keeper parameter.cfg"
    assert env["NNI_TS_KEEPER_CA_PEM"] == cert.read_text()


@pytest.mark.slow  # 4-6 s each: the keeper must be reported lost while it still tries to report
async def test_manager_unreachable_metrics_come_from_the_pod_log_once(
    cluster: FakeCluster, nfs_dir: Path, tmp_path: Path, platform: str, code_dir: Path
) -> None:
    """The keepers reach the manager through a proxy: the first record goes live, then the network is cut
    until the trial's job has ended. The keeper is reported lost while it still tries to report (its
    reportTimeout is longer than the heartbeat time-out, as by default), the platform follows the pod's
    log, and the rest comes from there, each record once, the forged lines ignored, even where the
    controller deletes a finished pod at once (FrameworkController). When the network heals, the keeper's
    held-back reports change nothing."""
    async with ClusterServer("127.0.0.1", 0, heartbeat_timeout=0.6) as server:
        with TcpProxy(("127.0.0.1", server.port)) as proxy:
            svc = _make(
                cluster,
                nfs_dir,
                tmp_path,
                platform,
                code_dir,
                reportTimeout=3,
                keeperHeartbeat=0.2,
                service_kwargs={"server": server, "keeper_server_url": f"http://127.0.0.1:{proxy.port}"},
            )
            metrics: list[TrialJobMetric] = []
            first = asyncio.Event()

            def listen(metric: TrialJobMetric) -> None:
                metrics.append(metric)
                first.set()

            svc.add_trial_job_metric_listener(listen)
            gate = tmp_path / "gate"
            async with svc:
                detail = await svc.submit_trial_job(form({"n": 3, "final": 0.5, "gate": str(gate), "code": 3}))
                async with asyncio.timeout(TIMEOUT):
                    await first.wait()
                proxy.partition()
                gate.touch()
                done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
                proxy.heal()
                await asyncio.sleep(0.2)  # what the proxy held back reaches the server now: nothing new
    assert done.status is TrialJobStatus.FAILED and done.exit_code == 3, done.message
    assert _values(metrics, detail.id) == [0.0, 0.1, 0.2, 0.3, 0.5]
    assert [m.sequence for m in metrics] == [0, 1, 2, 3, 4]


@contextlib.asynccontextmanager
async def _keeper_that_gives_up(
    cluster: FakeCluster, nfs_dir: Path, tmp_path: Path, code_dir: Path
) -> AsyncIterator[tuple[Any, TcpProxy, list[TrialJobMetric], asyncio.Event]]:
    """A kubeflow service (started) whose keepers reach the cluster server through a proxy the test can
    cut, and give up after 0.5 s (reportTimeout) long before the heartbeat time-out: (service, proxy,
    the metrics delivered, an event set at the first one)."""
    async with ClusterServer("127.0.0.1", 0, heartbeat_timeout=60.0) as server:
        with TcpProxy(("127.0.0.1", server.port)) as proxy:
            svc = _make(
                cluster,
                nfs_dir,
                tmp_path,
                "kubeflow",
                code_dir,
                reportTimeout=0.5,
                service_kwargs={"server": server, "keeper_server_url": f"http://127.0.0.1:{proxy.port}"},
            )
            metrics: list[TrialJobMetric] = []
            first = asyncio.Event()

            def listen(metric: TrialJobMetric) -> None:
                metrics.append(metric)
                first.set()

            svc.add_trial_job_metric_listener(listen)
            async with svc:
                yield svc, proxy, metrics, first


async def test_a_keeper_that_gives_up_before_it_is_missed_is_read_back_when_its_pod_ends(
    cluster: FakeCluster, nfs_dir: Path, tmp_path: Path, code_dir: Path
) -> None:
    """The other path: the keeper gives up (reportTimeout 0.5 s) long before the heartbeat time-out, so no
    log is followed; the pod's log is read once its container ended (the TFJob keeps its pods)."""
    async with _keeper_that_gives_up(cluster, nfs_dir, tmp_path, code_dir) as (svc, proxy, metrics, first):
        gate = tmp_path / "gate"
        detail = await svc.submit_trial_job(form({"n": 2, "final": 0.25, "gate": str(gate)}))
        async with asyncio.timeout(TIMEOUT):
            await first.wait()
        proxy.partition()
        gate.touch()
        done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
        followed = dict(svc.stager._followers)
        proxy.heal()
    assert done.status is TrialJobStatus.SUCCEEDED and done.exit_code == 0, done.message
    assert _values(metrics, detail.id) == [0.0, 0.1, 0.2, 0.25]
    assert [m.sequence for m in metrics] == [0, 1, 2, 3]
    assert followed == {}  # read back, not followed


async def test_a_rotated_log_delivers_the_records_before_its_gap_and_reads_stream_bounded(
    cluster: FakeCluster, nfs_dir: Path, tmp_path: Path, code_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The kubelet rotates the pod's log (containerLogMaxSize 4 MiB) while the manager cannot be reached:
    records 1 and 2 are framed, then 7 MiB of output push them out of the log before it is read. The
    records after the gap (3, 4 and the exit) are not delivered (never a hole), the manager warns once that
    #1 is missing, and the trial ends by its job's state (and its exit, which the log still has). The log is
    streamed: reading the 3 MiB left of it back holds a small part at a time (read whole, it took 2.6 times
    the log's size), and a tail of ``stdout`` asks for the last lines only."""
    cluster.kubelet.container_log_max_size = 4 << 20
    async with _keeper_that_gives_up(cluster, nfs_dir, tmp_path, code_dir) as (svc, proxy, metrics, first):
        gate = tmp_path / "gate"
        params = {"n": 3, "final": 0.25, "gate": str(gate), "pad_at": 2, "pad": 7 << 20}
        detail = await svc.submit_trial_job(form(params))
        async with asyncio.timeout(TIMEOUT):
            await first.wait()
        proxy.partition()
        gate.touch()
        done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
        (pod,) = cluster.list("pods", label_selector=f"nni-ts.io/trial={detail.id}")
        log = cluster.pod_log(pod["metadata"]["name"])
        tracemalloc.start()
        try:
            records, ended = await svc.stager.read_back(detail.id, None, pod=pod["metadata"]["name"])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        tail = await svc.get_trial_file(detail.id, "stdout", tail=1000)
        proxy.heal()
    assert done.status is TrialJobStatus.SUCCEEDED and done.exit_code == 0, done.message
    assert "metric records from #1 on were lost" in (done.message or ""), done.message
    assert _values(metrics, detail.id) == [0.0] and [m.sequence for m in metrics] == [0]
    assert [seq for seq, _data in records] == [3, 4] and ended is not None and ended["record_count"] == 5
    gaps = [r.getMessage() for r in caplog.records if "neither delivered nor in its pod's log" in r.getMessage()]
    assert len(gaps) == 1 and "2 metric record(s) from #1 on" in gaps[0], gaps
    assert len(log) > 2.5 * 2**20 and peak < 1.5 * 2**20, (len(log), peak)
    text = "".join(line for line in log.splitlines(keepends=True) if not line.startswith(("@nni-ts:m1", "@nni-ts:x1")))
    assert tail == text.encode()[-1000:] and b"@nni-ts:" not in tail
    assert cluster.server.log_queries[-1][2] == {"tailLines": "100"}


async def test_a_stdout_tail_asks_for_more_lines_while_frames_fill_the_last_ones(
    cluster: FakeCluster, nfs_dir: Path, tmp_path: Path, code_dir: Path
) -> None:
    """A tail of ``stdout`` asks for the log's last lines (``tailLines``); when they are mostly frames, the
    next request asks for eight times as many. Frame lines are left out however the stream is cut."""
    script = "for i in range(300): print(f'text {i:03d}')\nfor i in range(400): print('@nni-ts:m1 x 1 0 0/1 AA==')"
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "chatty"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "c", "image": "python", "command": ["python3", "-c", script]}],
            },
        }
    )
    await cluster.wait_for_object("pods", "chatty", lambda p: p["status"].get("phase") == "Succeeded")
    text = "".join(f"text {i:03d}\n" for i in range(300)).encode()
    svc = _make(cluster, nfs_dir, tmp_path, "kubeflow", code_dir)
    async with svc:
        tail = await svc.stager.read_file("t", "stdout", 1000, pod="chatty")
        whole = await svc.stager.read_file("t", "stdout", None, pod="chatty")
    assert tail == text[-1000:] and whole == text
    assert [q for _ns, name, q in cluster.server.log_queries if name == "chatty"] == [
        {"tailLines": "100"},
        {"tailLines": "800"},
        {},
    ]


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_log_text_leaves_out_frame_lines_however_the_stream_is_cut(size: int) -> None:
    from nni_ts.platforms.kubernetes.podstorage import MAX_FRAME_LINE, _LogText

    long = b"@nni-ts:m1 " + b"y" * MAX_FRAME_LINE + b"\n"  # too long for a frame: the trial's text
    log = b"a\n@nni-ts:m1 t 1 0 0/1 AA== m\n@nni-ts:x\nb @nni-ts:x1 t\n" + long + b"@nni-ts:x1 t 1 0 1 1 m\n@nni"
    for tail, want in ((None, b"a\n@nni-ts:x\nb @nni-ts:x1 t\n" + long + b"@nni"), (6, b"y\n@nni")):
        text = _LogText(tail)
        for i in range(0, len(log), size):
            text.feed(log[i : i + size])
        text.end()
        assert (text.value(), text.lines) == (want, 7)


def test_line_splitter_keeps_the_end_of_a_long_line() -> None:
    from nni_ts.platforms.kubernetes.client import LineSplitter

    lines = LineSplitter(8)
    assert lines.feed(b"ab\ncd") == b"ab\n" and lines.feed(b"x" * 100) == b""
    assert lines.feed(b"yz @frame\nnext\nta") == b"x" * 8 + b"yz @frame\nnext\n" and lines.rest() == b"ta"


async def test_a_pod_that_cannot_fetch_its_files_fails_the_trial_saying_why(
    cluster: FakeCluster, nfs_dir: Path, tmp_path: Path, code_dir: Path
) -> None:
    svc = _make(
        cluster, nfs_dir, tmp_path, "kubeflow", code_dir, service_kwargs={"keeper_server_url": "http://127.0.0.1:9"}
    )
    async with svc:
        f = form({"n": 1})
        f.env = {"NNI_TS_KEEPER_FETCH_TRIES": "1"}
        detail = await svc.submit_trial_job(f)
        done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
    assert done.status is TrialJobStatus.FAILED and done.exit_code == 127, done.message
    message = done.message or ""
    assert "could not fetch the trial's files from the manager's cluster server" in message, message
    assert "cannot fetch keeper.tar.gz from the manager at http://127.0.0.1:9" in message, message


def _experiment(storage: dict[str, Any] | None) -> dict[str, Any]:
    role = {"replicas": 1, "command": "python3 t.py", "cpuNumber": 1, "memorySize": "1g", "dockerImage": "python:3.11"}
    service: dict[str, Any] = {"platform": "kubeflow", "operator": "tf-operator", "worker": role}
    if storage is not None:
        service["storage"] = storage
    return {
        "searchSpace": {"x": {"_type": "choice", "_value": [1]}},
        "trialConcurrency": 1,
        "tuner": {"name": "TPE"},
        "trialCommand": "python3 t.py",
        "trialCodeDirectory": ".",
        "trainingService": service,
    }


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        (None, None),
        ({"storageType": "none", "codeInImage": "/app"}, None),
        (
            {"storageType": "nfs", "server": "a", "path": "/p", "codeInImage": "/app"},
            "codeInImage is for storageType none",
        ),
        ({"storageType": "none", "codeInImage": "app"}, "codeInImage must be an absolute path in the image, not 'app'"),
        ({"storageType": "none", "server": "10.0.0.1"}, "storageType none shares nothing: remove server"),
    ],
)
def test_storage_is_optional_and_mistakes_name_the_key(storage: dict[str, Any] | None, message: str | None) -> None:
    from nni_ts.config.loader import config_from_dict
    from nni_ts.errors import ConfigError

    if message is None:
        config = config_from_dict(_experiment(storage), base_dir=Path("."))
        assert config.training_service.storage.storage_type == "none"
        return
    with pytest.raises(ConfigError) as info:
        config_from_dict(_experiment(storage), base_dir=Path("."))
    assert "trainingService.storage" in str(info.value) and message in str(info.value)
