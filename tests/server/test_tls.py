"""TLS between the keepers and the cluster server (issue 13 #6): the server serves https:// with a
certificate from a private CA, and a real keeper trusts that CA through ``--ca-file``
(``NNI_TS_KEEPER_CA_FILE``); without it the keeper cannot report, and its journal keeps everything."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cluster_support import RecordingSink, record_text, start_keeper, trial_command, wait_exit

from nni_ts.server import ClusterServer
from nni_ts.testing.k8s.tls import make_certificate, server_context
from trial_keeper.journal import JOURNAL_NAME


async def test_the_keeper_reports_over_https_trusting_the_ca_file(tmp_path: Path, trial_dir: Path) -> None:
    cert, key = make_certificate(tmp_path / "pki", "127.0.0.1")
    async with ClusterServer(heartbeat_timeout=30.0, ssl_context=server_context(cert, key)) as server:
        assert server.url.startswith("https://")
        sink = RecordingSink()
        server.register("Tls1", sink)
        proc = await start_keeper(
            trial_dir,
            "Tls1",
            trial_command(trial_dir, 5),
            server_url=server.url,
            token=server.token_for("Tls1"),
            extra=["--ca-file", str(cert)],
        )
        assert await wait_exit(proc) == 0
        await asyncio.wait_for(sink.exited.wait(), 10)
        sink.check_exactly([record_text("Tls1", i) for i in range(5)])


async def test_a_keeper_without_the_ca_does_not_report(tmp_path: Path, trial_dir: Path) -> None:
    cert, key = make_certificate(tmp_path / "pki", "127.0.0.1")
    async with ClusterServer(heartbeat_timeout=30.0, ssl_context=server_context(cert, key)) as server:
        sink = RecordingSink()
        server.register("Tls2", sink)
        proc = await start_keeper(
            trial_dir,
            "Tls2",
            trial_command(trial_dir, 2),
            server_url=server.url,
            token=server.token_for("Tls2"),
            extra=["--report-timeout", "1"],
        )
        assert await wait_exit(proc) == 0
        assert sink.records == [] and not sink.started.is_set()
        assert (trial_dir / JOURNAL_NAME).stat().st_size > 0  # the journal keeps the records
