"""The ``nni-ts`` command: what ``nnictl`` did, for nni-ts experiments.

Exit codes: 0 success, 1 an experiment or internal failure, 2 a user's mistake (bad config, unknown
experiment, wrong arguments), 130 interrupted. A user's mistake prints one paragraph, never a
traceback; ``NNI_TS_DEBUG=1`` shows tracebacks for everything.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from ..config.errors import redact
from ..errors import ConfigError, NniTsError, UserError

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports mistakes with exit code 2 and one paragraph (it already does; keep it)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"nni-ts: error: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nni-ts", description="Run hyperparameter-search experiments (NNI-compatible).")
    p.add_argument("--json", action="store_true", help="Machine-readable output.")
    p.add_argument("--version", action="version", version=f"nni-ts {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("create", help="Create and run an experiment from an NNI v1 or v2 config file.")
    c.add_argument("-c", "--config", required=True, help="The experiment YAML or JSON file.")
    c.add_argument("--id", help="Use this experiment id instead of a generated one.")
    c.add_argument("--detach", action="store_true", help="Run in the background and return at once.")
    c.add_argument("--quiet", action="store_true", help="No live progress display.")
    c.add_argument("--json", action="store_true", help=argparse.SUPPRESS, dest="json_sub")
    _dashboard_args(c, default_port=8080)

    for name, helptext in (
        ("resume", "Continue an interrupted experiment: re-attach to running trials, finish the budget."),
        ("extend", "Give an experiment more budget (or re-run its failed trials) and continue it."),
    ):
        r = sub.add_parser(name, help=helptext)
        r.add_argument("id")
        r.add_argument(
            "-c",
            "--config",
            help="The experiment's config file: used only if the store lost the experiment (its data directory is "
            "gone), to rebuild it from its Kubernetes cluster.",
        )
        r.add_argument("--max-trial-number", type=int, help="A new maxTrialNumber (total, not additional).")
        r.add_argument("--max-experiment-duration", help="A new maxExperimentDuration, e.g. 2h.")
        r.add_argument("--rerun-failed", action="store_true", help="Run the failed trials' parameters again.")
        r.add_argument("--detach", action="store_true", help="Run in the background and return at once.")
        r.add_argument("--quiet", action="store_true", help="No live progress display.")
        r.add_argument("--json", action="store_true", help=argparse.SUPPRESS, dest="json_sub")
        _dashboard_args(r, default_port=8080)

    u = sub.add_parser("update", help="Change a running experiment: concurrency, budget or search space.")
    u.add_argument("id")
    u.add_argument("what", choices=_UPDATE_KEYS, help="What to change.")
    u.add_argument(
        "value", help="The new value: a number, a duration such as 2h, or a search-space JSON/YAML file (or JSON)."
    )
    u.add_argument("--json", action="store_true", help=argparse.SUPPRESS, dest="json_sub")

    v = sub.add_parser("view", help="Show an experiment and serve its dashboard, read-only (never changes it).")
    v.add_argument("id")
    v.add_argument("--json", action="store_true", help=argparse.SUPPRESS, dest="json_sub")
    _dashboard_args(v, default_port=8080)

    s = sub.add_parser("stop", help="Stop a running experiment and cancel its trials.")
    s.add_argument("id", nargs="?", help="The experiment (default: the one running experiment).")
    s.add_argument("--all", "-a", action="store_true", help="Stop every running experiment.")
    s.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="Seconds to wait for the manager to stop before interrupting it (SIGINT, then SIGTERM); default 60.",
    )
    s.add_argument("--json", action="store_true", help=argparse.SUPPRESS, dest="json_sub")

    e = sub.add_parser("experiment", help="List, show, export, import and delete experiments.")
    esub = e.add_subparsers(dest="action", required=True, parser_class=_Parser)
    el = esub.add_parser("list", help="Every experiment recorded.")
    el.add_argument("--all", action="store_true", help="Accepted for nnictl's sake: the list always has them all.")
    el.add_argument("--json", action="store_true", help=argparse.SUPPRESS, dest="json_sub")
    es = esub.add_parser("show", help="One experiment's record and config.")
    es.add_argument("id", nargs="?", help="The experiment (default: the one running experiment).")
    es.add_argument("--json", action="store_true", help=argparse.SUPPRESS, dest="json_sub")
    ex = esub.add_parser("export", help="Every trial's parameters and results, as JSON or CSV (ours, or NNI's).")
    ex.add_argument("id", nargs="?", help="The experiment (default: the one running experiment).")
    ex.add_argument(
        "--format",
        choices=("json", "csv", "nni"),
        help="json or csv (every trial, every key of its results), or nni: exactly what nnictl's export writes "
        "(JSON unless --type csv).",
    )
    ex.add_argument("--type", "-t", choices=("json", "csv"), help="json or csv (nnictl's flag).")
    ex.add_argument("--output", "-o", "--filename", "-f", help="Write to this file instead of standard output.")
    ex.add_argument(
        "--with-metrics",
        "--intermediate",
        "-i",
        action="store_true",
        help="Include the intermediate results too.",
    )
    ex.add_argument("--json", action="store_true", help=argparse.SUPPRESS, dest="json_sub")

    t = sub.add_parser("trial", help="List, kill and read the logs of trials.")
    tsub = t.add_subparsers(dest="action", required=True, parser_class=_Parser)
    tl = tsub.add_parser("ls", help="The trials of an experiment.")
    tl.add_argument("id", nargs="?", help="The experiment (default: the one running experiment).")
    hl = tl.add_mutually_exclusive_group()
    hl.add_argument("--head", type=int, help="Only the N trials with the highest final result.")
    hl.add_argument("--tail", type=int, help="Only the N trials with the lowest final result.")
    tl.add_argument("--json", action="store_true", help=argparse.SUPPRESS, dest="json_sub")
    tk = tsub.add_parser("kill", help="Cancel one running trial.")
    tk.add_argument("id", nargs="?", help="The experiment (default: the one running experiment).")
    tk.add_argument("trial", nargs="?", help="The trial to cancel.")
    tk.add_argument("--trial_id", "--trial-id", "-T", dest="trial_opt", help="The trial to cancel (nnictl's flag).")
    tk.add_argument("--json", action="store_true", help=argparse.SUPPRESS, dest="json_sub")
    tg = tsub.add_parser("log", help="A trial's stdout (or stderr, or trial.log).")
    tg.add_argument("id")
    tg.add_argument("trial")
    g = tg.add_mutually_exclusive_group()
    g.add_argument("--stderr", action="store_true", help="Show stderr instead of stdout.")
    g.add_argument("--trial-log", action="store_true", help="Show trial.log.")
    tg.add_argument("--tail", type=int, help="Only the last N lines.")
    tg.add_argument("--json", action="store_true", help=argparse.SUPPRESS, dest="json_sub")

    pl = sub.add_parser("platforms", help="The installed platforms.")
    pl.add_argument("--json", action="store_true", help=argparse.SUPPRESS, dest="json_sub")

    from .nnictl_cmds import add_parsers as add_nnictl_parsers
    from .service_cmds import add_parsers as add_service_parsers

    add_service_parsers(sub, _Parser)
    add_nnictl_parsers(sub, tsub, esub, _Parser)
    return p


_UPDATE_KEYS = ("concurrency", "trialnum", "duration", "searchspace")


def _dashboard_args(p: argparse.ArgumentParser, *, default_port: int) -> None:
    p.add_argument(
        "--port", type=int, default=default_port, help=f"The dashboard's port (default {default_port}; 0 picks one)."
    )
    p.add_argument("--host", default="127.0.0.1", help="The address the dashboard binds to (default 127.0.0.1).")
    p.add_argument("--base-path", default="/", help="Serve the dashboard under this URL prefix (reverse proxy).")
    p.add_argument("--no-dashboard", action="store_true", help="Do not serve the web dashboard.")


def _version() -> str:
    from .. import __version__

    return __version__


# ---------------------------------------------------------------------- output helpers


class _Out:
    def __init__(self, as_json: bool, stream: TextIO | None = None) -> None:
        self.json = as_json
        self.stream = stream or sys.stdout

    def emit(self, data: Any, text: str) -> None:
        if self.json:
            self.stream.write(json.dumps(data, indent=2, default=str) + "\n")
        else:
            self.stream.write(text + ("\n" if not text.endswith("\n") else ""))
        self.stream.flush()


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _fmt_value(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=False))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _trial_dict(t: Any) -> dict[str, Any]:
    return {
        "id": t.id,
        "sequenceId": t.sequence_id,
        "parameterId": t.parameter_id,
        "attempt": t.attempt,
        "status": t.status.value,
        "parameters": t.parameters,
        "finalValue": t.final_value,
        "final": json.loads(t.final_data).get("value") if t.final_data else None,
        "metricCount": t.metric_count,
        "startTime": t.start_ms,
        "endTime": t.end_ms,
        "exitCode": t.exit_code,
        "message": t.message,
        "infrastructureFailure": t.infrastructure_failure,
    }


def _experiment_status(record: Any) -> str:
    from ..experiment.experiment import ExperimentStatus, manager_alive

    if record.status == ExperimentStatus.RUNNING and not manager_alive(record.manager_pid, record.manager_started):
        return ExperimentStatus.INTERRUPTED
    return str(record.status)


def resolve_experiment_id(given: str | None) -> str:
    """The experiment a command is about: the one given, else the only running one (as nnictl does)."""
    if given:
        return given
    from ..experiment.experiment import ExperimentStatus, manager_alive
    from ..storage import open_store

    with open_store(readonly=True) as store:
        records = store.list_experiments()
    running = [
        r.id
        for r in records
        if r.status == ExperimentStatus.RUNNING and manager_alive(r.manager_pid, r.manager_started)
    ]
    if len(running) == 1:
        return running[0]
    if not running:
        raise UserError("No experiment is running; name the experiment (see `nni-ts experiment list`).")
    raise UserError(f"{len(running)} experiments are running ({', '.join(running)}); name the one you mean.")


# ---------------------------------------------------------------------- running experiments


class _ProgressDisplay:
    """A live status line: in place on a terminal, a line every few seconds otherwise."""

    def __init__(self, exp: Any, stream: TextIO, *, quiet: bool) -> None:
        self.exp = exp
        self.stream = stream
        self.quiet = quiet
        self.tty = stream.isatty()
        self._last = 0.0

    def line(self) -> str:
        p = self.exp.progress()
        total = f"/{p.max_trial_number}" if p.max_trial_number else ""
        best = f"best {_fmt_value(p.best_value)} ({p.best_trial})" if p.best_trial else "best -"
        return (
            f"done {p.done}{total}  running {p.running}  failed {p.failed}  {best}  "
            f"elapsed {_fmt_duration(p.elapsed)}  ETA {_fmt_duration(p.eta)}"
        )

    async def run(self) -> None:
        if self.quiet:
            return
        period = 0.5 if self.tty else 10.0
        while True:
            self.show()
            await asyncio.sleep(period)

    def show(self, final: bool = False) -> None:
        if self.quiet:
            return
        text = self.line()
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


async def _open_dashboard(exp: Any, args: argparse.Namespace | None) -> Any:
    """Serve the experiment's dashboard (``nni-ts create``) and print its URL; the runner, or None."""
    if args is None or getattr(args, "no_dashboard", True):
        return None
    from ..dashboard import Dashboard, LocalBackend, start_dashboard

    dashboard = Dashboard(exp.store.path, LocalBackend(exp), base_path=args.base_path)
    runner, url = await start_dashboard(dashboard, args.host, args.port, port_given=_port_given(args))
    sys.stderr.write(f"Dashboard of experiment {exp.id}: {url}#/experiments/{exp.id}\n")
    sys.stderr.flush()
    return runner


def _port_given(args: argparse.Namespace) -> bool:
    return any(a == "--port" or a.startswith("--port=") for a in getattr(args, "raw_argv", []))


async def _run_experiment(exp: Any, out: _Out, *, quiet: bool, args: argparse.Namespace | None = None) -> int:
    loop = asyncio.get_running_loop()
    interrupts = 0
    dashboard = await _open_dashboard(exp, args)

    def on_signal(signum: int, frame: Any) -> None:
        # Not loop.add_signal_handler: its callback waits for the loop, which a blocking tuner holds.
        # The first signal asks for a clean stop; the next one interrupts whatever runs (a stuck tuner).
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            raise KeyboardInterrupt
        loop.call_soon_threadsafe(exp.stop, f"Stopped by signal {signal.Signals(signum).name}.")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    _signal_ready(exp)
    display = _ProgressDisplay(exp, sys.stderr, quiet=quiet or out.json)
    if not out.json and not quiet:
        exp.events.on("started", lambda eid: sys.stderr.write(f"Experiment {eid}: {exp.working_directory}\n"))
    ticker = loop.create_task(display.run(), name="nni-ts-progress")
    try:
        result = await exp.run()
    finally:
        ticker.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if dashboard is not None:
            await dashboard.cleanup()
    display.show(final=True)
    best = result.best
    data = {
        "id": result.experiment_id,
        "status": result.status,
        "message": result.message,
        "trials": len(result.trials),
        "succeeded": result.succeeded,
        "best": _trial_dict(best) if best is not None else None,
        "noSuccess": result.no_success,
    }
    lines = [f"Experiment {result.experiment_id} {result.status}: {result.message or ''}".rstrip()]
    if best is not None:
        lines.append(f"Best trial {best.id}: {_fmt_value(best.final_value)} with {json.dumps(best.parameters)}")
    elif result.no_success:
        lines.append(result.no_success)
    else:
        lines.append("No trial succeeded with a final result.")
    out.emit(data, "\n".join(lines))
    if interrupts and result.status == "STOPPED":
        return EXIT_INTERRUPTED
    if result.status == "ERROR" or result.no_success:
        return EXIT_FAILED
    return EXIT_OK


def _setup_logging(working_dir: Path) -> list[logging.Handler]:
    """Log to ``manager.log`` in the experiment's directory; warnings also to stderr."""
    working_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    root = logging.getLogger("nni_ts")
    root.setLevel(logging.INFO)
    handler = logging.FileHandler(working_dir / "manager.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if not os.environ.get("NNI_TS_DEBUG") else logging.DEBUG)
    console.setFormatter(logging.Formatter("nni-ts: %(levelname)s: %(message)s"))
    root.addHandler(console)
    # paramiko logs a connection failure with its traceback, from its own threads; without a handler of
    # its own, Python prints that to stderr. nni-ts reports the failure in a sentence: keep the rest in
    # manager.log.
    ssh_log = logging.getLogger("paramiko")
    ssh_log.addHandler(handler)
    ssh_log.propagate = False
    return [handler, console]


def _run_logged(exp: Any, out: _Out, *, quiet: bool, args: argparse.Namespace | None = None) -> int:
    handlers = _setup_logging(exp.working_directory)
    try:
        return asyncio.run(_run_experiment(exp, out, quiet=quiet, args=args))
    finally:
        root = logging.getLogger("nni_ts")
        for h in handlers:
            root.removeHandler(h)
            logging.getLogger("paramiko").removeHandler(h)
            h.close()


def _detach(argv: list[str], experiment_id: str, working_dir: Path, out: _Out) -> int:
    """Start the same command in the background (a new session; stdout to manager.out, stderr to
    manager.err) and return once it runs: its config built and its platform started, or failed."""
    working_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_path = working_dir / "manager.out"
    err_path = working_dir / "manager.err"
    err_start = err_path.stat().st_size if err_path.exists() else 0
    cmd = [sys.executable, "-m", "nni_ts.cli", *argv, "--quiet"]
    read_end, write_end = os.pipe()
    env = dict(os.environ, NNI_TS_READY_FD=str(write_end))
    try:
        with open(log_path, "ab") as log_file, open(err_path, "ab") as err_file:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=err_file,
                start_new_session=True,
                pass_fds=(write_end,),
                env=env,
            )
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as ready:
        signal_byte = ready.read(1)  # one byte once running; end of file if the manager ended first
    if signal_byte != b"1":
        code = proc.wait()
        with open(err_path, "rb") as fh:
            fh.seek(err_start)
            sys.stderr.write(fh.read().decode("utf-8", "replace"))
        sys.stderr.write(f"nni-ts: experiment {experiment_id} did not start (exit code {code}).\n")
        return code or EXIT_FAILED
    out.emit(
        {"id": experiment_id, "pid": proc.pid, "log": str(log_path), "stderr": str(err_path)},
        f"Experiment {experiment_id} runs in the background (pid {proc.pid}); its output goes to {log_path}.\n"
        f"Follow it with `nni-ts view {experiment_id}`; stop it with `nni-ts stop {experiment_id}`.",
    )
    return EXIT_OK


def _signal_ready(exp: Any) -> None:
    """In a detached manager: tell the waiting `--detach` command once the experiment runs."""
    fd = os.environ.pop("NNI_TS_READY_FD", None)
    if fd is None:
        return

    def ready(_: str) -> None:
        try:
            os.write(int(fd), b"1")
            os.close(int(fd))
        except OSError:
            pass  # the waiting command is gone (interrupted): nobody to tell

    exp.events.once("running", ready)


def _cmd_create(args: argparse.Namespace, out: _Out, argv: list[str]) -> int:
    from ..config.loader import check_algorithms, load_experiment_config
    from ..experiment import Experiment
    from ..training_service import new_trial_id

    config = load_experiment_config(args.config)  # validate before detaching: mistakes show here
    check_algorithms(config, args.config)  # every tuner and assessor mistake at once, with its line
    experiment_id = args.id or new_trial_id(8).lower()
    if args.detach:
        rest = [a for a in argv if a != "--detach"]
        if not args.id:
            rest += ["--id", experiment_id]
        from ..paths import experiment_dir

        wd = Path(config.experiment_working_directory or "").expanduser() / experiment_id
        return _detach(
            rest, experiment_id, wd if config.experiment_working_directory else experiment_dir(experiment_id), out
        )
    exp = Experiment(config, experiment_id=experiment_id)
    try:
        return _run_logged(exp, out, quiet=args.quiet, args=args)
    except ConfigError as exc:
        if exc.source is None:  # a tuner or platform section: name the file it came from
            raise ConfigError(str(exc), source=args.config) from None
        raise


def _cmd_resume(args: argparse.Namespace, out: _Out, argv: list[str]) -> int:
    from ..experiment import Experiment

    if args.command == "extend" and not (args.max_trial_number or args.max_experiment_duration or args.rerun_failed):
        raise UserError("`nni-ts extend` needs --max-trial-number, --max-experiment-duration or --rerun-failed.")
    from ..errors import StoreError

    try:
        exp = Experiment.resume(
            args.id,
            max_trial_number=args.max_trial_number,
            max_experiment_duration=args.max_experiment_duration,
            rerun_failed=args.rerun_failed,
            config=args.config,
        )
    except StoreError as exc:
        if args.config is not None or "no experiment with the id" not in str(exc):
            raise
        raise StoreError(
            f"{exc} If its manager's data directory was lost and it ran on Kubernetes, give its config file "
            f"(`nni-ts {args.command} {args.id} -c config.yml`): it is rebuilt from the trials in the cluster."
        ) from None
    if args.detach:
        exp.store.close()
        return _detach([a for a in argv if a != "--detach"], args.id, exp.working_directory, out)
    return _run_logged(exp, out, quiet=args.quiet, args=args)


def _cmd_view(args: argparse.Namespace, out: _Out) -> int:
    from ..storage import open_store

    with open_store(readonly=True) as store:
        record = store.get_experiment(args.id)
        trials = store.list_trials(args.id)
    from ..experiment.results import best_trial, optimize_mode

    status = _experiment_status(record)
    mode = optimize_mode(record.config)
    best = best_trial(trials, mode)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status.value] = counts.get(t.status.value, 0) + 1
    data = {
        "id": record.id,
        "name": record.name,
        "status": status,
        "platform": record.platform,
        "message": record.message,
        "trialCounts": counts,
        "best": _trial_dict(best) if best else None,
        "workingDirectory": record.working_dir,
    }
    lines = [
        f"Experiment {record.id} ({record.name or 'unnamed'}) on {record.platform}: {status}",
        f"  {record.message}" if record.message else "",
        "  trials: " + (", ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items())) or "none"),
        f"  best ({mode}): {_fmt_value(best.final_value)} in trial {best.id} with {json.dumps(best.parameters)}"
        if best
        else "  best: none yet",
        f"  files: {record.working_dir}",
    ]
    ended = [t for t in trials if t.status.is_terminal]
    if ended and best is None and not any(t.status.value == "SUCCEEDED" for t in ended):
        first = min(ended, key=lambda t: (t.status.value != "FAILED", t.sequence_id))
        lines.append(f"  no trial succeeded: see why with `nni-ts trial log {record.id} {first.id} --stderr`")
    out.emit(data, "\n".join(x for x in lines if x))
    # The dashboard is served on a terminal, or when its address is given; a script that pipes
    # `nni-ts view` gets the summary and its exit code, as before.
    wanted = (
        sys.stdout.isatty()
        or _port_given(args)
        or any(a.startswith(("--host", "--base-path")) for a in getattr(args, "raw_argv", []))
    )
    if out.json or args.no_dashboard or not wanted:
        return EXIT_OK
    return asyncio.run(_serve_view(args))


async def _serve_view(args: argparse.Namespace) -> int:
    """``nni-ts view ID``: serve the dashboard read-only until interrupted."""
    from ..dashboard import Dashboard, start_dashboard
    from ..storage.store import default_store_path

    dashboard = Dashboard(default_store_path(), base_path=args.base_path)
    runner, url = await start_dashboard(dashboard, args.host, args.port, port_given=_port_given(args))
    sys.stderr.write(f"Dashboard (read-only): {url}#/experiments/{args.id}\nPress Ctrl-C to stop it.\n")
    sys.stderr.flush()
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    try:
        await done.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    return EXIT_OK


def _cmd_update(args: argparse.Namespace, out: _Out) -> int:
    """``nni-ts update ID concurrency|trialnum|duration|searchspace VALUE`` through the manager's control socket."""
    from ..experiment.control import request
    from ..experiment.experiment import manager_alive
    from ..storage import open_store

    with open_store(readonly=True) as store:
        record = store.get_experiment(args.id)
    if not manager_alive(record.manager_pid, record.manager_started):
        raise UserError(
            f"Experiment {args.id} has no running manager; `nni-ts update` changes running experiments "
            f"(use `nni-ts extend {args.id}` to continue an ended one with more budget)."
        )
    key, value = _update_value(args.what, args.value)
    answer = request(args.id, {"op": "update", key: value})
    changed = answer.get("updated", {})
    out.emit(
        {"id": args.id, "updated": changed},
        f"Experiment {args.id} updated: " + ", ".join(f"{k} = {json.dumps(v)[:80]}" for k, v in changed.items()),
    )
    return EXIT_OK


def _update_value(what: str, text: str) -> tuple[str, Any]:
    if what in ("concurrency", "trialnum"):
        key = "trialConcurrency" if what == "concurrency" else "maxTrialNumber"
        try:
            number = int(text)
        except ValueError:
            raise UserError(f"`nni-ts update ... {what}` takes a positive integer, got {text!r}.") from None
        return key, number
    if what == "duration":
        from ..config.experiment import parse_duration

        parse_duration(text, path="maxExperimentDuration")
        return "maxExperimentDuration", text
    path = Path(text)
    if path.is_file():
        import yaml

        try:
            space = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise UserError(f"The search-space file {text} is not JSON or YAML: {exc}") from None
    else:
        try:
            space = json.loads(text)
        except ValueError:
            raise UserError(
                f"`nni-ts update ... searchspace` takes a JSON/YAML file or JSON text; {text!r} is neither."
            ) from None
    if not isinstance(space, dict):
        raise UserError(f"The search space from {text} must be a mapping of parameter names to {{_type, _value}}.")
    return "searchSpace", space


def _cmd_stop(args: argparse.Namespace, out: _Out) -> int:
    from ..experiment.experiment import ExperimentStatus, manager_alive
    from ..storage import open_store

    if args.all:
        with open_store(readonly=True) as store:
            records = [r for r in store.list_experiments() if r.status == ExperimentStatus.RUNNING]
        if not records:
            out.emit({"stopped": [], "notStopped": []}, "No experiment is running.")
            return EXIT_OK
    else:
        experiment_id = resolve_experiment_id(args.id)
        with open_store(readonly=True) as store:
            record = store.get_experiment(experiment_id)
        if record.status != ExperimentStatus.RUNNING:
            out.emit(
                {"id": record.id, "stopped": [], "notStopped": [], "status": record.status},
                f"Experiment {record.id} is not running ({record.status}).",
            )
            return EXIT_OK
        records = [record]
    stopped: list[str] = []
    failures: dict[str, str] = {}
    lines = []
    for record in records:
        if not manager_alive(record.manager_pid, record.manager_started):
            # The manager died: re-attach to whatever still runs and cancel it for good.
            asyncio.run(_stop_orphaned(record.id))
            stopped.append(record.id)
            lines.append(f"Experiment {record.id} stopped (its manager had died; its trials are cancelled).")
            continue
        why = _stop_manager(record, args.timeout)
        if why is None:
            stopped.append(record.id)
            lines.append(f"Experiment {record.id} stopped.")
        else:
            failures[record.id] = why
            lines.append(f"Experiment {record.id} has NOT stopped: {why}")
    out.emit({"stopped": stopped, "notStopped": failures}, "\n".join(lines))
    return EXIT_FAILED if failures else EXIT_OK


def _stop_manager(record: Any, timeout: float) -> str | None:
    """Stop a live manager: ask it, then SIGINT, then SIGTERM. None once it is gone, else why not."""
    from ..experiment.control import request
    from ..experiment.experiment import manager_alive

    pid = record.manager_pid or 0

    def gone_within(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not manager_alive(record.manager_pid, record.manager_started):
                return True
            time.sleep(0.05)
        return not manager_alive(record.manager_pid, record.manager_started)

    steps = []
    try:
        request(record.id, {"op": "stop"}, timeout=min(timeout, 5.0))
        steps.append("asked over its control socket")
    except UserError as exc:
        steps.append(f"its control socket did not answer ({str(exc).rstrip('.')})")
    if gone_within(timeout):
        return None
    grace = max(5.0, min(timeout, 30.0))
    # SIGINT asks again (a manager whose loop is free stops cleanly); SIGTERM interrupts whatever it is
    # doing, after which it still cancels its trials: give that longer.
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, max(15.0, grace))):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return None
        steps.append(f"sent {sig.name}")
        if gone_within(wait):
            return None
    return (
        f"its manager (pid {pid}) is still running after {timeout:g} s: " + ", ".join(steps) + ". "
        f"It may be stuck in a tuner or in the platform; see `nni-ts log stderr {record.id}`. "
        f"`kill -9 {pid}` ends it; then `nni-ts stop {record.id}` cancels the trials it left."
    )


async def _stop_orphaned(experiment_id: str) -> None:
    from ..experiment import Experiment

    exp = Experiment.resume(experiment_id, control_socket=False)
    exp.stop("Stopped by the user (nni-ts stop) after the manager had died.")
    await exp.run()


def _cmd_experiment(args: argparse.Namespace, out: _Out) -> int:
    from ..storage import open_store

    if args.action in ("delete", "import", "status"):
        from .nnictl_cmds import run_experiment_action

        return run_experiment_action(args, out)
    with open_store(readonly=True) as store:
        if args.action == "list":
            records = store.list_experiments()
            rows = []
            data = []
            for r in records:
                status = _experiment_status(r)
                created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_ms / 1000))
                rows.append([r.id, r.name or "", r.platform, status, created])
                data.append({"id": r.id, "name": r.name, "platform": r.platform, "status": status, "created": created})
            out.emit(data, _table(rows, ["ID", "NAME", "PLATFORM", "STATUS", "CREATED"]) if rows else "No experiments.")
            return EXIT_OK
        experiment_id = resolve_experiment_id(args.id)
        record = store.get_experiment(experiment_id)
        if args.action == "show":
            shown = {
                "id": record.id,
                "name": record.name,
                "status": _experiment_status(record),
                "platform": record.platform,
                "message": record.message,
                "workingDirectory": record.working_dir,
                "config": redact(record.config),
            }
            out.emit(shown, json.dumps(shown, indent=2))
            return EXIT_OK
        from .exports import export_text

        trials = store.list_trials(experiment_id)
        metrics: dict[str, list[Any]] = {}
        if args.with_metrics:
            for m in store.iter_metrics(experiment_id):
                metrics.setdefault(m.trial_id, []).append(m)
        kind = args.type or (args.format if args.format in ("json", "csv") else "json")
        if args.type and args.format in ("json", "csv") and args.type != args.format:
            raise UserError(f"--format {args.format} and --type {args.type} disagree; give one of them.")
        fmt = "nni" if args.format == "nni" else "nni-ts"
        text = export_text(trials, metrics, fmt=fmt, kind=kind, intermediate=args.with_metrics)
    if args.output:
        Path(args.output).write_text(text)
        if not out.json:
            sys.stderr.write(f"Wrote {len(trials)} trials to {args.output}.\n")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK


def _cmd_trial(args: argparse.Namespace, out: _Out) -> int:
    from ..experiment.control import request
    from ..experiment.experiment import manager_alive
    from ..storage import open_store

    if args.action == "run":
        from .nnictl_cmds import trial_run

        return trial_run(args, out)
    if args.action == "kill":
        # nnictl: `trial kill [ID] --trial_id T`; ours: `trial kill ID T` (one positional: the trial).
        if args.trial_opt:
            args.trial = args.trial_opt
        elif args.trial is None and args.id is not None:
            args.id, args.trial = None, args.id
        if args.trial is None:
            raise UserError("Name the trial to cancel: `nni-ts trial kill [EXPERIMENT] TRIAL` or --trial_id TRIAL.")
    args.id = resolve_experiment_id(args.id)
    with open_store(readonly=True) as store:
        record = store.get_experiment(args.id)
        if args.action == "ls":
            trials = store.list_trials(args.id)
            if args.head is not None or args.tail is not None:
                scored = sorted((t for t in trials if t.final_value is not None), key=lambda t: t.final_value or 0.0)
                trials = scored[::-1][: args.head] if args.head is not None else scored[: args.tail]
            rows = [
                [t.id, str(t.sequence_id), t.status.value, _fmt_value(t.final_value), json.dumps(t.parameters)[:60]]
                for t in trials
            ]
            out.emit([_trial_dict(t) for t in trials], _table(rows, ["TRIAL", "SEQ", "STATUS", "FINAL", "PARAMETERS"]))
            return EXIT_OK
        store.get_trial(args.id, args.trial)  # a clear error for an unknown trial
    alive = manager_alive(record.manager_pid, record.manager_started)
    if args.action == "kill":
        if not alive:
            raise UserError(
                f"Experiment {args.id} has no running manager; `nni-ts stop {args.id}` cancels whatever is left."
            )
        request(args.id, {"op": "kill", "trial": args.trial})
        out.emit({"killed": args.trial}, f"Trial {args.trial} cancelled.")
        return EXIT_OK

    def read(name: str, tail_bytes: int | None) -> bytes:
        if alive:
            answer = request(args.id, {"op": "log", "trial": args.trial, "file": name, "tail": tail_bytes})
            return base64.b64decode(answer["data"])
        path: Path = Path(record.working_dir) / "trials" / str(args.trial) / name
        if not path.exists():
            return b""
        if tail_bytes is None:
            return path.read_bytes()
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - tail_bytes))
            tail: bytes = fh.read()
        return tail

    def content(name: str) -> bytes:
        return tail_lines(lambda n: read(name, n), args.tail) if args.tail is not None else read(name, None)

    name = "stderr" if args.stderr else "trial.log" if args.trial_log else "stdout"
    data = content(name)
    if name == "stdout" and not data.strip():
        # A trial using the real nni prints into trial.log (nni redirects its stdout there).
        log_data = content("trial.log")
        if log_data:
            sys.stderr.write(f"(stdout of trial {args.trial} is empty; showing its trial.log)\n")
            data, name = log_data, "trial.log"
    if out.json:
        out.emit({"trial": args.trial, "file": name, "content": data.decode("utf-8", "replace")}, "")
        return EXIT_OK
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    return EXIT_OK


def tail_lines(read: Any, lines: int) -> bytes:
    """The last ``lines`` lines of a file read by ``read(tail_bytes)``, never cutting a line (or a character).

    Asks for more bytes until the answer holds enough line breaks or the whole file.
    """
    if lines <= 0:
        return b""
    want = 4096
    while True:
        data: bytes = read(want)
        body = data[:-1] if data.endswith(b"\n") else data
        if body.count(b"\n") >= lines or len(data) < want or want >= 1 << 30:
            break
        want *= 4
    kept = body.split(b"\n")[-lines:]
    return b"\n".join(kept) + (b"\n" if data.endswith(b"\n") else b"")


def _cmd_platforms(args: argparse.Namespace, out: _Out) -> int:
    from ..registry import available_platforms

    names = available_platforms()
    out.emit(names, "\n".join(names))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nni-ts`` console script. Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    args = parser.parse_args(argv)
    args.raw_argv = argv
    out = _Out(bool(args.json or getattr(args, "json_sub", False)))
    sub_argv = argv[argv.index(args.command) :] if args.command in argv else argv
    try:
        if args.command == "create":
            return _cmd_create(args, out, sub_argv)
        if args.command in ("resume", "extend"):
            return _cmd_resume(args, out, sub_argv)
        if args.command == "view":
            return _cmd_view(args, out)
        if args.command == "update":
            return _cmd_update(args, out)
        if args.command == "stop":
            return _cmd_stop(args, out)
        if args.command == "experiment":
            return _cmd_experiment(args, out)
        if args.command == "trial":
            return _cmd_trial(args, out)
        if args.command == "platforms":
            return _cmd_platforms(args, out)
        if args.command in ("top", "log", "platform", "algo", "config"):
            from .nnictl_cmds import run as run_nnictl_command

            return run_nnictl_command(args, out)
        if args.command in ("serve", "users"):
            from .service_cmds import run as run_service_command

            return run_service_command(args, out)
        parser.error(f"unknown command {args.command}")
    except UserError as exc:
        return _user_mistake(exc)
    except NniTsError as exc:
        if os.environ.get("NNI_TS_DEBUG"):
            raise
        sys.stderr.write(f"nni-ts: {exc}\n")
        # A store problem (unknown experiment id, no database yet) is the user's to fix too.
        from ..errors import StoreError

        return EXIT_USAGE if isinstance(exc, StoreError) else EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    return EXIT_OK


def _user_mistake(exc: UserError) -> int:
    if os.environ.get("NNI_TS_DEBUG"):
        raise exc
    sys.stderr.write(f"nni-ts: {exc}\n")
    return EXIT_USAGE
