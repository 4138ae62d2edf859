"""``python -m nni_ts.testing.k8s serve``: a cluster in its own process, used by kubectl, stopped by SIGTERM
with every pod process killed; and its command-line mistakes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

import pytest
from k8s_support import Kubectl

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]  # seconds per test: scripts/test --fast leaves it out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_serve_with_kubectl_then_sigterm(tmp_path: Path, crd_files: list[Path]) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (CI installs Debian's kubernetes-client).")
    port = free_port()
    state = tmp_path / "state"
    export = tmp_path / "export"
    export.mkdir()
    args = [
        sys.executable,
        "-m",
        "nni_ts.testing.k8s",
        "serve",
        "--port",
        str(port),
        "--state-dir",
        str(state),
        "--node",
        "n1:cpu=4,memory=8Gi,gpus=1",
        "--nfs",
        f"10.0.0.9:/srv={export}",
        "--token",
        "s3cret",
        "--tls",
    ]
    for crd in crd_files:
        args += ["--crd", str(crd)]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(20):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith(f"fake cluster serving at https://127.0.0.1:{port}"), line
        kubectl = Kubectl(state / "kubeconfig", tmp_path / "cache")
        manifest = tmp_path / "pod.yaml"
        manifest.write_text("""\
apiVersion: v1
kind: Pod
metadata: {name: writer}
spec:
  restartPolicy: Never
  containers:
    - name: main
      image: busybox
      command: ["sh", "-c", "echo $$ > /data/pid; echo hi > /data/hello; exec sleep 60"]
      volumeMounts: [{name: data, mountPath: /data}]
  volumes:
    - name: data
      nfs: {server: 10.0.0.9, path: /srv}
""")
        applied = await kubectl("apply", "-f", str(manifest))
        assert applied.code == 0, applied.err
        async with asyncio.timeout(20):
            while not (export / "pid").exists() or not (export / "pid").read_text().strip():
                await asyncio.sleep(0.05)
        pid = int((export / "pid").read_text())
        assert (export / "hello").read_text() == "hi\n"
        nodes = (await kubectl("get", "nodes", "-o", "json")).json()
        assert nodes["items"][0]["status"]["capacity"] == {
            "cpu": "4",
            "memory": "8Gi",
            "nvidia.com/gpu": "1",
            "pods": "1000",
        }
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def test_serve_mistakes_are_sentences(tmp_path: Path) -> None:
    for extra, expected in (
        (["--node", "n1:cpu=lots"], "'lots' is not a quantity"),
        (["--nfs", "nowhere"], "expected SERVER:/EXPORT/PATH=LOCAL_DIR"),
        (["--crd", str(tmp_path / "missing.yaml")], "no such file"),
    ):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nni_ts.testing.k8s",
            "serve",
            "--state-dir",
            str(tmp_path / "s"),
            *extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 2, err
        assert expected in err.decode() and "Traceback" not in err.decode()
