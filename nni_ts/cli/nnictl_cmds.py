"""The rest of nnictl: ``experiment delete|import``, ``top``, ``log stdout|stderr``, ``platform clean``,
``algo register|list|show|unregister`` and ``trial run`` (one trial by hand)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..config.errors import redact
from ..errors import UserError

__all__ = ["COMMANDS", "add_parsers", "run", "run_experiment_action", "trial_run"]

COMMANDS = ("top", "log", "platform", "algo", "config")


def add_parsers(sub: Any, tsub: Any, esub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add this module's commands to the ``nni-ts`` parsers (``trial`` and ``experiment`` sub-parsers too)."""
    hidden_json = {"action": "store_true", "help": argparse.SUPPRESS, "dest": "json_sub"}

    est = esub.add_parser("status", help="An experiment's status (nnictl's `experiment status`).")
    est.add_argument("id", nargs="?", help="The experiment (default: the one running experiment).")
    est.add_argument("--json", **hidden_json)

    cf = sub.add_parser("config", help="config show [ID]: an experiment's config (nnictl's `config show`).")
    csub = cf.add_subparsers(dest="action", required=True, parser_class=parser_class)
    cs = csub.add_parser("show", help="The experiment's stored config (v2 form, paths absolute).")
    cs.add_argument("id", nargs="?", help="The experiment (default: the one running experiment).")
    cs.add_argument("--json", **hidden_json)

    ed = esub.add_parser("delete", help="Delete an experiment: its files and its records.")
    ed.add_argument("id", nargs="?")
    ed.add_argument("--all", action="store_true", help="Delete every experiment that is not running.")
    ed.add_argument("--json", **hidden_json)

    ei = esub.add_parser(
        "import", help="Feed results from a file (NNI's import format or export, JSON or CSV) to an experiment's tuner."
    )
    ei.add_argument("id", nargs="?", help="The experiment (default: the one running experiment).")
    ei.add_argument("--filename", "-f", required=True, help="The JSON or CSV file of results.")
    ei.add_argument("--json", **hidden_json)

    tr = tsub.add_parser("run", help="Run one trial by hand with given parameters (no experiment).")
    tr.add_argument("script", help="The trial's Python file.")
    tr.add_argument("--params", default="{}", help="The parameters as JSON, e.g. '{\"lr\": 0.1}' (default {}).")
    tr.add_argument("--python", default=sys.executable, help="The interpreter (default: this one).")
    tr.add_argument("--json", **hidden_json)

    top = sub.add_parser("top", help="Watch the running experiments (Ctrl-C to leave).")
    top.add_argument("--time", "-t", type=float, default=3.0, help="Seconds between refreshes (default 3).")
    top.add_argument("--once", action="store_true", help="Print once and return.")
    top.add_argument("--json", **hidden_json)

    lg = sub.add_parser("log", help="The manager's output: log stdout|stderr [ID].")
    lsub = lg.add_subparsers(dest="action", required=True, parser_class=parser_class)
    lt = lsub.add_parser("trial", help="Where a trial's files are (nnictl's `log trial`).")
    lt.add_argument("id", nargs="?", help="The experiment (default: the one running experiment).")
    lt.add_argument("--trial_id", "--trial-id", "-T", dest="trial_id", help="The trial (default: every trial).")
    lt.add_argument("--json", **hidden_json)
    for name in ("stdout", "stderr"):
        one = lsub.add_parser(name, help=f"What the manager wrote to {name}.")
        one.add_argument("id", nargs="?", help="The experiment (default: the one running experiment).")
        one.add_argument("--tail", "-T", type=int, help="Only the last N lines.")
        one.add_argument("--head", "-H", type=int, help="Only the first N lines.")
        one.add_argument("--path", action="store_true", help="Print the file's path instead.")
        one.add_argument("--json", **hidden_json)

    pf = sub.add_parser("platform", help="platform clean -c CONFIG: remove nni-ts's files from a platform.")
    psub = pf.add_subparsers(dest="action", required=True, parser_class=parser_class)
    pc = psub.add_parser("clean", help="Remove the files nni-ts left on the config's platform (local, remote).")
    pc.add_argument("--config", "-c", required=True, help="An experiment config naming the platform.")
    pc.add_argument("--json", **hidden_json)

    al = sub.add_parser("algo", help="Register custom tuners and assessors under a name usable in configs.")
    asub = al.add_subparsers(dest="action", required=True, parser_class=parser_class)
    ar = asub.add_parser("register", aliases=["reg"], help="Register the algorithms of an NNI meta file.")
    ar.add_argument("--meta_path", "--meta-path", "-m", dest="meta_path", required=True, help="The meta file (YAML).")
    ar.add_argument("--json", **hidden_json)
    au = asub.add_parser("unregister", aliases=["unreg"], help="Remove a registered algorithm.")
    au.add_argument("name")
    au.add_argument("--json", **hidden_json)
    ash = asub.add_parser("show", help="One registered algorithm.")
    ash.add_argument("name")
    ash.add_argument("--json", **hidden_json)
    alist = asub.add_parser("list", help="The built-in and registered algorithms.")
    alist.add_argument("--json", **hidden_json)


def run(args: argparse.Namespace, out: Any) -> int:
    """Run one of :data:`COMMANDS`."""
    if args.command == "top":
        return _top(args, out)
    if args.command == "log":
        return _log(args, out)
    if args.command == "platform":
        return _platform_clean(args, out)
    if args.command == "config":
        return _config_show(args, out)
    return _algo(args, out)


def _config_show(args: argparse.Namespace, out: Any) -> int:
    from ..storage import open_store
    from . import resolve_experiment_id

    experiment_id = resolve_experiment_id(args.id)
    with open_store(readonly=True) as store:
        config = redact(store.get_experiment(experiment_id).config)  # passwords, passphrases: <hidden>
    out.emit(config, json.dumps(config, indent=2))
    return 0


# ---------------------------------------------------------------------- experiment delete / import


def run_experiment_action(args: argparse.Namespace, out: Any) -> int:
    if args.action == "delete":
        return _delete(args, out)
    if args.action == "status":
        from ..storage import open_store
        from . import _experiment_status, resolve_experiment_id

        experiment_id = resolve_experiment_id(args.id)
        with open_store(readonly=True) as store:
            record = store.get_experiment(experiment_id)
        status = _experiment_status(record)
        out.emit({"id": experiment_id, "status": status, "message": record.message}, f"{experiment_id}: {status}")
        return 0
    return _import(args, out)


def _delete(args: argparse.Namespace, out: Any) -> int:
    from ..experiment.experiment import ExperimentStatus, manager_alive
    from ..storage import open_store

    if not args.id and not args.all:
        raise UserError("Name the experiment to delete (`nni-ts experiment delete ID`) or use --all.")
    deleted = []
    skipped = []
    with open_store() as store:
        records = [store.get_experiment(args.id)] if args.id else store.list_experiments()
        for record in records:
            if record.status == ExperimentStatus.RUNNING and manager_alive(record.manager_pid, record.manager_started):
                if args.id:
                    raise UserError(
                        f"Experiment {record.id} is running; stop it first (`nni-ts stop {record.id}`), then delete it."
                    )
                skipped.append(record.id)
                continue
            working = Path(record.working_dir)
            store.delete_experiment(record.id)
            if working.is_dir():
                shutil.rmtree(working)
            deleted.append(record.id)
    text = "\n".join(f"Experiment {i} deleted (files and records)." for i in deleted) or "Nothing deleted."
    if skipped:
        text += "\nStill running, not deleted: " + ", ".join(skipped) + "."
    out.emit({"deleted": deleted, "running": skipped}, text)
    return 0


def _import(args: argparse.Namespace, out: Any) -> int:
    from ..experiment.control import request
    from ..experiment.experiment import IMPORTED_FILE, manager_alive
    from ..storage import open_store
    from . import resolve_experiment_id
    from .exports import parse_import

    experiment_id = resolve_experiment_id(args.id)
    with open_store(readonly=True) as store:
        record = store.get_experiment(experiment_id)
    space = record.config.get("searchSpace") or {}
    entries = parse_import(Path(args.filename).expanduser(), space)
    if not entries:
        raise UserError(f"{args.filename} holds no result to import.")
    for n, entry in enumerate(entries, start=1):
        unknown = sorted(set(entry["parameter"]) - set(space))
        if space and unknown:
            raise UserError(
                f"{args.filename}, result {n}: {', '.join(unknown)} is not a parameter of experiment "
                f"{experiment_id}'s search space ({', '.join(space)}); nothing was imported."
            )
    path = Path(record.working_dir) / IMPORTED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        offset = fh.tell()
        fh.write(b"".join(json.dumps(e).encode() + b"\n" for e in entries))
        fh.flush()
        os.fsync(fh.fileno())
    live = manager_alive(record.manager_pid, record.manager_started)
    if live:
        request(experiment_id, {"op": "import", "offset": offset})
        when = "its tuner has them now"
    else:
        when = f"its tuner gets them when it runs again (`nni-ts resume {experiment_id}` or `nni-ts extend`)"
    out.emit(
        {"id": experiment_id, "imported": len(entries), "live": live},
        f"Imported {len(entries)} results into experiment {experiment_id}: {when}.",
    )
    return 0


# ---------------------------------------------------------------------- top


def _top(args: argparse.Namespace, out: Any) -> int:
    from ..experiment.control import request
    from ..experiment.experiment import ExperimentStatus, manager_alive
    from ..storage import open_store
    from . import _fmt_duration, _fmt_value, _table

    def snapshot() -> list[dict[str, Any]]:
        with open_store(readonly=True) as store:
            records = [r for r in store.list_experiments() if r.status == ExperimentStatus.RUNNING]
        rows = []
        for r in records:
            if not manager_alive(r.manager_pid, r.manager_started):
                continue
            row: dict[str, Any] = {"id": r.id, "name": r.name, "platform": r.platform}
            try:
                row.update(request(r.id, {"op": "progress"}, timeout=5.0)["progress"])
            except UserError as exc:
                row["error"] = str(exc)
            rows.append(row)
        return rows

    def render(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "No experiment is running."
        table = []
        for p in rows:
            total = f"/{p['max_trial_number']}" if p.get("max_trial_number") else ""
            table.append(
                [
                    p["id"],
                    p["name"] or "",
                    p["platform"],
                    f"{p.get('done', '?')}{total}",
                    str(p.get("running", "?")),
                    str(p.get("failed", "?")),
                    _fmt_value(p.get("best_value")),
                    _fmt_duration(p.get("elapsed")),
                    _fmt_duration(p.get("eta")),
                ]
            )
        header = ["ID", "NAME", "PLATFORM", "DONE", "RUNNING", "FAILED", "BEST", "ELAPSED", "ETA"]
        return _table(table, header)

    if args.once or out.json:
        rows = snapshot()
        out.emit(rows, render(rows))
        return 0
    tty = sys.stdout.isatty()
    try:
        while True:
            text = render(snapshot())
            stamp = time.strftime("%H:%M:%S")
            sys.stdout.write(("\x1b[H\x1b[2J" if tty else "") + f"nni-ts top  {stamp}\n{text}\n")
            sys.stdout.flush()
            time.sleep(max(0.2, args.time))
    except KeyboardInterrupt:
        return 0


# ---------------------------------------------------------------------- log


def _log(args: argparse.Namespace, out: Any) -> int:
    from ..storage import open_store
    from . import resolve_experiment_id, tail_lines

    experiment_id = resolve_experiment_id(args.id)
    with open_store(readonly=True) as store:
        record = store.get_experiment(experiment_id)
        trial_ids = [args.trial_id] if args.action == "trial" and args.trial_id else None
        if args.action == "trial":
            trial_ids = [store.get_trial(experiment_id, t).id for t in trial_ids] if trial_ids else None
            trial_ids = trial_ids or [t.id for t in store.list_trials(experiment_id)]
    wd = Path(record.working_dir)
    if args.action == "trial":
        paths = {t: str(wd / "trials" / t) for t in trial_ids or []}
        out.emit(paths, "\n".join(f"{t}: {p}" for t, p in paths.items()) or "No trials.")
        return 0
    path = wd / ("manager.out" if args.action == "stdout" else "manager.err")
    if args.action == "stderr" and not path.exists():
        path = wd / "manager.log"  # a foreground run: its stderr was the terminal; its log is here
    if args.path:
        out.emit({"path": str(path)}, str(path))
        return 0
    if not path.exists():
        raise UserError(
            f"Experiment {experiment_id} has no {path.name}: it ran in the foreground, so its output went to "
            f"the terminal. Its log is {wd / 'manager.log'}."
        )

    def read(n: int | None) -> bytes:
        with open(path, "rb") as fh:
            if n is not None:
                fh.seek(max(0, path.stat().st_size - n))
            return fh.read()

    if args.tail is not None:
        data = tail_lines(read, args.tail)
    else:
        data = read(None)
        if args.head is not None:
            data = b"".join(data.splitlines(keepends=True)[: args.head])
    if out.json:
        out.emit({"path": str(path), "content": data.decode("utf-8", "replace")}, "")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


# ---------------------------------------------------------------------- platform clean


def _platform_clean(args: argparse.Namespace, out: Any) -> int:
    """Remove what nni-ts left on the config's platform that no experiment needs any more.

    Kept: the directories of experiments recorded as RUNNING in this store (live, or interrupted and
    resumable). Local: unrecorded experiment directories nni-ts made. Remote: on every machine, the
    directories under ``<workDirectory>/experiments`` of experiments that are not running.
    """
    from ..config.loader import load_experiment_config
    from ..experiment.experiment import ExperimentStatus
    from ..storage import open_store

    config = load_experiment_config(args.config)
    platform = config.training_service.platform
    with open_store(readonly=True) as store:
        records = store.list_experiments()
    running = {r.id for r in records if r.status == ExperimentStatus.RUNNING}
    if platform == "local":
        root, removed = _clean_local(config, records, running)
    elif platform == "remote":
        import asyncio

        root, removed = asyncio.run(_clean_remote(config.training_service, running))
    else:
        raise UserError(
            f"`nni-ts platform clean` cleans the local and remote platforms; on {platform}, each experiment's "
            "resources are removed when it ends, and `nni-ts experiment delete ID` removes its files."
        )
    text = "\n".join(f"Removed {p}" for p in removed) or f"Nothing to clean under {root}."
    out.emit({"removed": removed, "root": root}, text)
    return 0


def _clean_local(config: Any, records: list[Any], running: set[str]) -> tuple[str, list[str]]:
    from ..paths import home

    root = (
        Path(config.experiment_working_directory).expanduser()
        if config.experiment_working_directory
        else home() / "experiments"
    )
    known = {Path(r.working_dir).resolve() for r in records}
    removed = []
    if root.is_dir():
        for child in sorted(root.iterdir()):
            # Only directories nni-ts made (a trials/ folder or a manager log) that no experiment records.
            ours = (child / "trials").is_dir() or (child / "manager.log").exists()
            if child.is_dir() and ours and child.resolve() not in known:
                shutil.rmtree(child)
                removed.append(str(child))
    return str(root), removed


async def _clean_remote(ts: Any, running: set[str]) -> tuple[str, list[str]]:
    import shlex
    from concurrent.futures import ThreadPoolExecutor

    from ..platforms.remote.service import DEFAULT_WORK_DIR
    from ..platforms.remote.ssh import HostConnection, expand_remote

    known = Path(ts.known_hosts_file).expanduser() if ts.known_hosts_file else None
    removed: list[str] = []
    roots = []
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="nni-ts-clean") as executor:
        for machine in ts.machine_list:
            conn = HostConnection(
                machine, executor=executor, known_hosts=known, accept_new_host_keys=ts.accept_new_host_keys
            )
            try:
                await conn.connect()
                assert conn.home is not None
                experiments = expand_remote(conn.home, machine.work_directory, DEFAULT_WORK_DIR) + "/experiments"
                roots.append(f"{conn.label}:{experiments}")
                listing = await conn.check(
                    f"cd {shlex.quote(experiments)} 2>/dev/null && ls -1A || true", what="list the experiments"
                )
                for name in listing.split("\n"):
                    if not name or name in running:
                        continue
                    path = f"{experiments}/{name}"
                    await conn.check(f"rm -rf -- {shlex.quote(path)}", what=f"remove {path}")
                    removed.append(f"{conn.label}:{path}")
            finally:
                await conn.close()
    return ", ".join(roots), removed


# ---------------------------------------------------------------------- algo


def _algo(args: argparse.Namespace, out: Any) -> int:
    from .. import algorithms

    if args.action in ("register", "reg"):
        metas = algorithms.register(Path(args.meta_path).expanduser())
        out.emit(metas, "\n".join(f"{m['builtinName']} registered ({m['algoType']}: {m['className']})." for m in metas))
    elif args.action in ("unregister", "unreg"):
        algorithms.unregister(args.name)
        out.emit({"unregistered": args.name}, f"{args.name} unregistered.")
    elif args.action == "show":
        meta = algorithms.get(args.name)
        if meta is None:
            raise UserError(f"No algorithm named {args.name!r} is registered (see `nni-ts algo list`).")
        out.emit(meta, json.dumps(meta, indent=2))
    else:
        from . import _table

        rows = algorithms.list_all()
        table = [[r["builtinName"], r["algoType"], r["source"], r.get("className") or ""] for r in rows]
        out.emit(rows, _table(table, ["NAME", "TYPE", "SOURCE", "CLASS"]))
    return 0


# ---------------------------------------------------------------------- trial run


def trial_run(args: argparse.Namespace, out: Any) -> int:
    """Run one trial by hand, as a platform would (NNI's trial protocol), and show what it reported."""
    import trial_keeper
    from trial_keeper.records import FrameDecoder

    from ..experiment.records import parse_record

    try:
        params = json.loads(args.params)
    except ValueError as exc:
        raise UserError(f"--params is not JSON: {exc}.") from None
    if not isinstance(params, dict):
        raise UserError("--params must be a JSON object of parameter names to values, e.g. '{\"lr\": 0.1}'.")
    script = Path(args.script).expanduser()
    if not script.is_file():
        raise UserError(f"The trial script {script} does not exist.")
    with tempfile.TemporaryDirectory(prefix="nni-ts-trial-") as sys_dir:
        record = {"parameter_id": 0, "parameter_source": "manual", "parameters": params, "parameter_index": 0}
        Path(sys_dir, "parameter.cfg").write_text(json.dumps(record))
        env = dict(os.environ)
        path = env.get("PYTHONPATH")
        env.update(
            NNI_PLATFORM="local",
            NNI_SYS_DIR=sys_dir,
            NNI_OUTPUT_DIR=sys_dir,
            NNI_TRIAL_JOB_ID="MANUAL",
            NNI_EXP_ID="MANUAL",
            NNI_TRIAL_SEQ_ID="0",
            MULTI_PHASE="false",
            PYTHONPATH=trial_keeper.LIGHT_NNI_PATH + (os.pathsep + path if path else ""),
        )
        proc = subprocess.run([args.python, str(script)], env=env, cwd=script.parent.resolve(), check=False)
        metrics_file = Path(sys_dir, ".nni", "metrics")
        records = FrameDecoder().feed(metrics_file.read_bytes()) if metrics_file.exists() else []
        trial_log = Path(sys_dir, "trial.log")
        log_text = trial_log.read_text("utf-8", "replace") if trial_log.exists() else ""
    parsed = [parse_record(r.decode("utf-8", "replace")) for r in records]
    intermediate = [p.value for p in parsed if p.type == "PERIODICAL"]
    finals = [p.value for p in parsed if p.type == "FINAL"]
    final = finals[-1] if finals else None
    lines = []
    if log_text and not out.json:
        sys.stdout.write(log_text)
    lines.append(f"Intermediate results: {json.dumps(intermediate)}")
    lines.append(f"Final result: {json.dumps(final)}" if finals else "Final result: none reported")
    lines.append(f"Exit code: {proc.returncode}")
    out.emit({"exitCode": proc.returncode, "intermediate": intermediate, "final": final}, "\n".join(lines))
    return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
