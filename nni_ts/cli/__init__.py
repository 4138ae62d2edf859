"""The ``nni-ts`` command: what ``nnictl`` did, for nni-ts experiments.

Exit codes: 0 success, 1 an experiment or internal failure, 2 a user's mistake (bad config, unknown
experiment, wrong arguments), 130 interrupted. A user's mistake prints one paragraph, never a
traceback; ``NNI_TS_DEBUG=1`` shows tracebacks for everything.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import io
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
    s.add_argument("id", nargs="?")
    s.add_argument("--all", action="store_true", help="Stop every running experiment.")
    s.add_argument("--json", action="store_true", help=argparse.SUPPRESS, dest="json_sub")

    e = sub.add_parser("experiment", help="List, show and export experiments.")
    esub = e.add_subparsers(dest="action", required=True, parser_class=_Parser)
    el = esub.add_parser("list", help="Every experiment recorded.")
    el.add_argument("--json", action="store_true", help=argparse.SUPPRESS, dest="json_sub")
    es = esub.add_parser("show", help="One experiment's record and config.")
    es.add_argument("id")
    es.add_argument("--json", action="store_true", help=argparse.SUPPRESS, dest="json_sub")
    ex = esub.add_parser("export", help="Every trial's parameters and results, as JSON or CSV.")
    ex.add_argument("id")
    ex.add_argument("--format", choices=("json", "csv"), default="json")
    ex.add_argument("--output", "-o", help="Write to this file instead of standard output.")
    ex.add_argument("--with-metrics", action="store_true", help="Include every intermediate metric (JSON only).")
    ex.add_argument("--json", action="store_true", help=argparse.SUPPRESS, dest="json_sub")

    t = sub.add_parser("trial", help="List, kill and read the logs of trials.")
    tsub = t.add_subparsers(dest="action", required=True, parser_class=_Parser)
    tl = tsub.add_parser("ls", help="The trials of an experiment.")
    tl.add_argument("id")
    tl.add_argument("--json", action="store_true", help=argparse.SUPPRESS, dest="json_sub")
    tk = tsub.add_parser("kill", help="Cancel one running trial.")
    tk.add_argument("id")
    tk.add_argument("trial")
    tk.add_argument("--json", action="store_true", help=argparse.SUPPRESS, dest="json_sub")
    tg = tsub.add_parser("log", help="A trial's stdout (or stderr, or trial.log).")
    tg.add_argument("id")
    tg.add_argument("trial")
    g = tg.add_mutually_exclusive_group()
    g.add_argument("--stderr", action="store_true", help="Show stderr instead of stdout.")
    g.add_argument("--trial-log", action="store_true", help="Show trial.log.")
    tg.add_argument("--tail", type=int, help="Only the last N bytes.")

    pl = sub.add_parser("platforms", help="The installed platforms.")
    pl.add_argument("--json", action="store_true", help=argparse.SUPPRESS, dest="json_sub")

    from .service_cmds import add_parsers as add_service_parsers

    add_service_parsers(sub, _Parser)
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


def _optimize_mode(config: dict[str, Any]) -> str:
    algo = config.get("tuner") or config.get("advisor") or {}
    mode = str((algo.get("classArgs") or {}).get("optimize_mode", "maximize"))
    return "minimize" if mode.lower().startswith("min") else "maximize"


def _best(trials: list[Any], mode: str) -> Any:
    scored = [t for t in trials if t.final_value is not None]
    if not scored:
        return None
    sign = -1.0 if mode == "minimize" else 1.0
    return max(scored, key=lambda t: sign * t.final_value)


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

    def on_signal(signum: int) -> None:
        nonlocal interrupts
        interrupts += 1
        exp.stop(f"Stopped by signal {signal.Signals(signum).name}.")

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    display = _ProgressDisplay(exp, sys.stderr, quiet=quiet or out.json)
    if not out.json and not quiet:
        exp.events.on("started", lambda eid: sys.stderr.write(f"Experiment {eid}: {exp.working_directory}\n"))
    ticker = loop.create_task(display.run(), name="nni-ts-progress")
    try:
        result = await exp.run()
    finally:
        ticker.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if dashboard is not None:
            await dashboard.cleanup()
    display.show(final=True)
    best = result.best
    data = {
        "id": result.experiment_id,
        "status": result.status,
        "message": result.message,
        "trials": len(result.trials),
        "best": _trial_dict(best) if best is not None else None,
    }
    lines = [f"Experiment {result.experiment_id} {result.status}: {result.message or ''}".rstrip()]
    if best is not None:
        lines.append(f"Best trial {best.id}: {_fmt_value(best.final_value)} with {json.dumps(best.parameters)}")
    else:
        lines.append("No trial reported a final result.")
    out.emit(data, "\n".join(lines))
    if result.status == "ERROR":
        return EXIT_FAILED
    return EXIT_INTERRUPTED if interrupts and result.status == "STOPPED" else EXIT_OK


def _setup_logging(working_dir: Path) -> list[logging.Handler]:
    """Log to ``manager.log`` in the experiment's directory; warnings also to stderr."""
    working_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger("nni_ts")
    root.setLevel(logging.INFO)
    handler = logging.FileHandler(working_dir / "manager.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if not os.environ.get("NNI_TS_DEBUG") else logging.DEBUG)
    console.setFormatter(logging.Formatter("nni-ts: %(levelname)s: %(message)s"))
    root.addHandler(console)
    return [handler, console]


def _run_logged(exp: Any, out: _Out, *, quiet: bool, args: argparse.Namespace | None = None) -> int:
    handlers = _setup_logging(exp.working_directory)
    try:
        return asyncio.run(_run_experiment(exp, out, quiet=quiet, args=args))
    finally:
        root = logging.getLogger("nni_ts")
        for h in handlers:
            root.removeHandler(h)
            h.close()


def _detach(argv: list[str], experiment_id: str, working_dir: Path, out: _Out) -> int:
    """Start the same command in the background (a new session, output to manager.out)."""
    working_dir.mkdir(parents=True, exist_ok=True)
    log_path = working_dir / "manager.out"
    cmd = [sys.executable, "-m", "nni_ts.cli", *argv, "--quiet"]
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    out.emit(
        {"id": experiment_id, "pid": proc.pid, "log": str(log_path)},
        f"Experiment {experiment_id} runs in the background (pid {proc.pid}); its output goes to {log_path}.\n"
        f"Follow it with `nni-ts view {experiment_id}`; stop it with `nni-ts stop {experiment_id}`.",
    )
    return EXIT_OK


def _cmd_create(args: argparse.Namespace, out: _Out, argv: list[str]) -> int:
    from ..config.loader import load_experiment_config
    from ..experiment import Experiment
    from ..training_service import new_trial_id

    config = load_experiment_config(args.config)  # validate before detaching: mistakes show here
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
    exp = Experiment.resume(
        args.id,
        max_trial_number=args.max_trial_number,
        max_experiment_duration=args.max_experiment_duration,
        rerun_failed=args.rerun_failed,
    )
    if args.detach:
        exp.store.close()
        return _detach([a for a in argv if a != "--detach"], args.id, exp.working_directory, out)
    return _run_logged(exp, out, quiet=args.quiet, args=args)


def _cmd_view(args: argparse.Namespace, out: _Out) -> int:
    from ..storage import open_store

    with open_store(readonly=True) as store:
        record = store.get_experiment(args.id)
        trials = store.list_trials(args.id)
    status = _experiment_status(record)
    mode = _optimize_mode(record.config)
    best = _best(trials, mode)
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
    out.emit(data, "\n".join(x for x in lines if x))
    if out.json or args.no_dashboard:
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
    from ..experiment.control import request
    from ..experiment.experiment import ExperimentStatus, manager_alive
    from ..storage import open_store

    if not args.id and not args.all:
        raise UserError("Name the experiment to stop (`nni-ts stop ID`) or use --all.")
    with open_store(readonly=True) as store:
        records = [store.get_experiment(args.id)] if args.id else store.list_experiments()
    stopped = []
    for record in records:
        if record.status != ExperimentStatus.RUNNING:
            if args.id:
                out.emit(
                    {"id": record.id, "stopped": False}, f"Experiment {record.id} is not running ({record.status})."
                )
            continue
        if manager_alive(record.manager_pid, record.manager_started):
            try:
                request(record.id, {"op": "stop"})
            except UserError:
                os.kill(record.manager_pid or 0, signal.SIGTERM)
            deadline = time.monotonic() + 120
            while manager_alive(record.manager_pid, record.manager_started) and time.monotonic() < deadline:
                time.sleep(0.1)
        else:
            # The manager died: re-attach to whatever still runs and cancel it for good.
            asyncio.run(_stop_orphaned(record.id))
        stopped.append(record.id)
    if args.id or stopped:
        out.emit({"stopped": stopped}, "\n".join(f"Experiment {i} stopped." for i in stopped) or "Nothing stopped.")
    else:
        out.emit({"stopped": []}, "No experiment is running.")
    return EXIT_OK


async def _stop_orphaned(experiment_id: str) -> None:
    from ..experiment import Experiment

    exp = Experiment.resume(experiment_id, control_socket=False)
    exp.stop("Stopped by the user (nni-ts stop) after the manager had died.")
    await exp.run()


def _cmd_experiment(args: argparse.Namespace, out: _Out) -> int:
    from ..storage import open_store

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
        record = store.get_experiment(args.id)
        if args.action == "show":
            shown = {
                "id": record.id,
                "name": record.name,
                "status": _experiment_status(record),
                "platform": record.platform,
                "message": record.message,
                "workingDirectory": record.working_dir,
                "config": record.config,
            }
            out.emit(shown, json.dumps(shown, indent=2))
            return EXIT_OK
        trials = store.list_trials(args.id)
        if args.format == "csv":
            text = _export_csv(trials)
        else:
            exported = [_trial_dict(t) for t in trials]
            if args.with_metrics:
                by_trial: dict[str, list[Any]] = {}
                for m in store.iter_metrics(args.id):
                    by_trial.setdefault(m.trial_id, []).append({"seq": m.seq, "type": m.type, "value": m.value})
                for item in exported:
                    item["metrics"] = by_trial.get(item["id"], [])
            text = json.dumps(exported, indent=1)
    if args.output:
        Path(args.output).write_text(text)
        if not out.json:
            sys.stderr.write(f"Wrote {len(trials)} trials to {args.output}.\n")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK


def _export_csv(trials: list[Any]) -> str:
    keys: list[str] = []
    seen = set()
    for t in trials:
        for k in t.parameters:
            if k not in seen:
                seen.add(k)
                keys.append(k)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["trialId", "sequenceId", "status", "finalValue", *keys])
    for t in trials:
        values = [json.dumps(v) if isinstance(v, dict | list) else v for v in (t.parameters.get(k) for k in keys)]
        writer.writerow([t.id, t.sequence_id, t.status.value, t.final_value, *values])
    return buf.getvalue()


def _cmd_trial(args: argparse.Namespace, out: _Out) -> int:
    from ..experiment.control import request
    from ..experiment.experiment import manager_alive
    from ..storage import open_store

    with open_store(readonly=True) as store:
        record = store.get_experiment(args.id)
        if args.action == "ls":
            trials = store.list_trials(args.id)
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
    name = "stderr" if args.stderr else "trial.log" if args.trial_log else "stdout"
    if alive:
        answer = request(args.id, {"op": "log", "trial": args.trial, "file": name, "tail": args.tail})
        data = base64.b64decode(answer["data"])
    else:
        path = Path(record.working_dir) / "trials" / args.trial / name
        data = path.read_bytes() if path.exists() else b""
        if args.tail is not None:
            data = data[-args.tail :] if args.tail else b""
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    return EXIT_OK


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
