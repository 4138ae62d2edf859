"""``nni-ts serve`` (the experiment service) and ``nni-ts users`` (its users and API tokens)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from ..errors import UserError

__all__ = ["add_parsers", "run"]

COMMANDS = ("serve", "users")
_ENV_DB = "NNI_TS_SERVICE_DB"
_ENV_DB_PASSWORD = "NNI_TS_SERVICE_DB_PASSWORD"


def _default_data_dir() -> Path:
    from ..paths import home

    return home() / "service"


def add_parsers(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``serve`` and ``users`` to the ``nni-ts`` sub-command parsers."""
    db_help = (
        f"The service database: sqlite:///PATH or postgresql://USER@HOST:PORT/DB (default: ${_ENV_DB}, else "
        f"sqlite under the data directory). Never a password here (it would show in ps): use --db-password-file, "
        f"${_ENV_DB_PASSWORD}, or the whole URL in ${_ENV_DB}."
    )
    pw_help = f"A file holding the PostgreSQL password (default: ${_ENV_DB_PASSWORD}, else ~/.pgpass)."
    s = sub.add_parser("serve", help="Run the multi-user experiment service (REST API).")
    s.add_argument("--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1).")
    s.add_argument("--port", type=int, default=8080, help="Port to listen on (0: any free port; default 8080).")
    s.add_argument("--db", help=db_help)
    s.add_argument("--db-password-file", help=pw_help)
    s.add_argument("--db-pool-size", type=int, default=20, help="PostgreSQL connections for the API (default 20).")
    s.add_argument(
        "--storage-pool-size",
        type=int,
        default=10,
        help="PostgreSQL connections the experiments write their trials and metrics on (default 10).",
    )
    s.add_argument(
        "--no-read-cache",
        dest="read_cache",
        action="store_false",
        help="PostgreSQL: read every poll of an experiment from the database, even when it has not changed "
        "(by default this replica answers repeated polls of the experiments it runs from memory).",
    )
    s.add_argument(
        "--trial-user",
        help="Run trials as this unprivileged OS user ('nni-{user}': one per service user); "
        "the service must run as root. Without it trials run as the service's own user.",
    )
    s.add_argument(
        "--trial-env",
        action="append",
        default=[],
        metavar="NAME",
        help="An environment variable trials get from the service (repeatable; PATH and the locale always).",
    )
    s.add_argument("--data-dir", help="Workspaces' files and the experiment store (default $NNI_TS_HOME/service).")
    s.add_argument(
        "--platform",
        default="local",
        help="Where experiments run: local, kubeflow, frameworkcontroller, kubernetes, trainjob.",
    )
    s.add_argument(
        "--platform-config",
        help="A YAML/JSON file of trainingService keys every experiment inherits (storage, nniManagerIp...).",
    )
    s.add_argument(
        "--namespace-template",
        default="nni-{user}-{workspace}",
        help="The Kubernetes namespace of a workspace (default nni-{user}-{workspace}).",
    )
    s.add_argument("--replica", help="This replica's name (default: the host name); it owns what it starts.")
    s.add_argument("--default-max-trials", type=int, default=64, help="Concurrent trials a user may run (default 64).")
    s.add_argument("--default-max-gpus", type=int, default=8, help="GPUs a user may use at a time (default 8).")
    s.add_argument(
        "--legacy-auth",
        choices=("token", "none"),
        default="token",
        help="Whether /api/v1/nni-exp needs a token (default) or trusts the body's user (trusted networks only).",
    )
    s.add_argument(
        "--stop-on-exit",
        action="store_true",
        help="Stop experiments when the service exits (default: leave trials running and re-attach on restart).",
    )
    s.add_argument("--json", action="store_true", help=argparse.SUPPRESS, dest="json_sub")

    u = sub.add_parser("users", help="Manage the experiment service's users and API tokens.")
    u.add_argument("--db", help=db_help)
    u.add_argument("--db-password-file", help=pw_help)
    u.add_argument("--data-dir", help=argparse.SUPPRESS)
    usub = u.add_subparsers(dest="action", required=True, parser_class=parser_class)
    ua = usub.add_parser("add", help="Add a user and print its API token (shown once).")
    ua.add_argument("name")
    ua.add_argument("--admin", action="store_true", help="The user sees and manages every workspace.")
    ua.add_argument("--max-trials", type=int, help="Concurrent trials this user may run (default: the service's).")
    ua.add_argument("--max-gpus", type=int, help="GPUs this user may use at a time (default: the service's).")
    ut = usub.add_parser("token", help="Make a user's API token (--rotate replaces an existing one).")
    ut.add_argument("name")
    ut.add_argument("--rotate", action="store_true", help="Replace the token; the old one stops working.")
    uq = usub.add_parser("quota", help="Set a user's quotas.")
    uq.add_argument("name")
    uq.add_argument("--max-trials", type=int, help="Concurrent trials (omit: the service's default).")
    uq.add_argument("--max-gpus", type=int, help="GPUs at a time (omit: the service's default).")
    ur = usub.add_parser(
        "remove",
        help="Remove a user: its token stops working, its experiments are stopped and archived for admins.",
    )
    ur.add_argument("name")
    ur.add_argument("--delete", action="store_true", help="Delete its experiments and files instead of archiving.")
    usub.add_parser("list", help="Every user (never their tokens).")
    ul = usub.choices["list"]
    for p in (ua, ut, uq, ur, ul):  # --db also after the action: `nni-ts users add NAME --db URL`
        p.add_argument("--db", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    for p in (u, ua, ut, uq, ur, ul):
        p.add_argument("--json", action="store_true", help=argparse.SUPPRESS, dest="json_sub")


def _db_url(args: argparse.Namespace) -> str:
    if args.db and re.match(r"^[a-z]+://[^/@:]*:[^/@]*@", args.db):
        raise UserError(
            "--db holds a password, which every user of this machine sees in `ps`; give the URL without it "
            f"and the password with --db-password-file FILE or ${_ENV_DB_PASSWORD} (or the whole URL in ${_ENV_DB})."
        )
    url = args.db or os.environ.get(_ENV_DB)
    if url:
        return str(url)
    data_dir = Path(args.data_dir).expanduser() if getattr(args, "data_dir", None) else _default_data_dir()
    return f"sqlite:///{data_dir / 'service.db'}"


def _db_password(args: argparse.Namespace) -> str | None:
    """The PostgreSQL password from --db-password-file or the environment (never from argv)."""
    path = getattr(args, "db_password_file", None)
    if path:
        try:
            text = Path(path).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"--db-password-file {path}: cannot read it ({exc.strerror}).") from None
        return text.rstrip("\r\n")
    return os.environ.get(_ENV_DB_PASSWORD) or None


def run(args: argparse.Namespace, out: Any) -> int:
    """Run ``serve`` or ``users``; returns the exit code."""
    if args.command == "serve":
        return _serve(args)
    return asyncio.run(_users(args, out))


# ---------------------------------------------------------------------- users


async def _users(args: argparse.Namespace, out: Any) -> int:
    from ..service import users
    from ..service.db import open_database

    db = await open_database(_db_url(args), password=_db_password(args))
    try:
        if args.action == "add":
            token = await users.add_user(
                db, args.name, admin=args.admin, max_trials=args.max_trials, max_gpus=args.max_gpus
            )
            out.emit(
                {"name": args.name, "admin": args.admin, "token": token},
                f"User {args.name} added{' (admin)' if args.admin else ''}. Its API token (shown only now):\n{token}",
            )
        elif args.action == "token":
            found = await db.fetchrow("SELECT token_hash FROM svc_users WHERE name = $1", args.name)
            if found is None:
                raise UserError(f"There is no user {args.name!r}; add it with `nni-ts users add {args.name}`.")
            if found[0] and not args.rotate:
                raise UserError(
                    f"User {args.name} has a token already; tokens are stored hashed and cannot be shown again. "
                    f"`nni-ts users token {args.name} --rotate` makes a new one."
                )
            token = await users.rotate_token(db, args.name)
            out.emit({"name": args.name, "token": token}, f"New API token of {args.name} (shown only now):\n{token}")
        elif args.action == "quota":
            await users.set_quota(db, args.name, max_trials=args.max_trials, max_gpus=args.max_gpus)
            out.emit({"name": args.name, "maxTrials": args.max_trials, "maxGpus": args.max_gpus}, "Quota set.")
        elif args.action == "remove":
            archived = await users.remove_user(db, args.name, delete=args.delete)
            what = "deleted" if args.delete else f"archived as {archived!r} (admins see them)"
            out.emit(
                {"removed": args.name, "archivedAs": archived, "delete": args.delete},
                f"User {args.name} removed; the service stops its experiments, and they are {what}.",
            )
        else:
            listed = await users.list_users(db)
            data = [
                {"name": u.name, "admin": u.is_admin, "maxTrials": u.max_trials, "maxGpus": u.max_gpus} for u in listed
            ]
            lines = [
                f"{u.name}{'  admin' if u.is_admin else ''}"
                f"  trials {u.max_trials if u.max_trials is not None else 'default'}"
                f"  gpus {u.max_gpus if u.max_gpus is not None else 'default'}"
                for u in listed
            ]
            out.emit(data, "\n".join(lines) or "No users.")
    finally:
        await db.close()
    return 0


# ---------------------------------------------------------------------- serve


class _RedactingFilter(logging.Filter):
    """Masks anything that looks like an API token or a bearer header in log lines."""

    _TOKEN = re.compile(r"(nts_[A-Za-z0-9_-]{8})[A-Za-z0-9_-]*|(Bearer\s+)\S+", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = self._TOKEN.sub(lambda m: (m.group(1) or m.group(2)) + "***", message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def _platform_defaults(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    from ..config.loader import read_structured_file

    data, _ = read_structured_file(Path(path).expanduser(), what="platform config")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of trainingService keys, got {type(data).__name__}.")
    data.pop("platform", None)
    return data


def _serve(args: argparse.Namespace) -> int:
    from ..registry import available_platforms
    from ..service import ExperimentService, PlatformPolicy, ServiceSettings

    if args.platform not in available_platforms():
        raise UserError(
            f"The platform {args.platform!r} is not installed here; installed: {', '.join(available_platforms())}."
        )
    for value, flag in (
        (args.default_max_trials, "--default-max-trials"),
        (args.default_max_gpus, "--default-max-gpus"),
    ):
        if value < 0:
            raise UserError(f"{flag} must be 0 or more, got {value}.")
    if args.db_pool_size < 1:
        raise UserError(f"--db-pool-size must be 1 or more, got {args.db_pool_size}.")
    if args.storage_pool_size < 1:
        raise UserError(f"--storage-pool-size must be 1 or more, got {args.storage_pool_size}.")
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else _default_data_dir()
    settings = ServiceSettings(
        data_dir=data_dir,
        database_url=_db_url(args),
        policy=PlatformPolicy(
            platform=args.platform,
            defaults=_platform_defaults(args.platform_config),
            namespace_template=args.namespace_template,
        ),
        replica=args.replica or socket.gethostname(),
        default_max_trials=args.default_max_trials,
        default_max_gpus=args.default_max_gpus,
        legacy_auth=args.legacy_auth,
        trial_user=args.trial_user,
        pool_size=args.db_pool_size,
        storage_pool_size=args.storage_pool_size,
        trial_env=tuple(args.trial_env),
        database_password=_db_password(args),
        read_cache=args.read_cache,
    )
    root = logging.getLogger("nni_ts")
    root.setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RedactingFilter())
    root.addHandler(handler)
    # The API thread and the engine thread share the GIL: hand it over every millisecond (Python's
    # default is 5 ms), so that an API request waits less behind the engine's work.
    sys.setswitchinterval(0.001)
    if args.trial_user is None and args.platform == "local":
        logging.getLogger("nni_ts.service").warning(
            "Trials run as the service's own OS user and can read its data directory and database; "
            "run the service as root with --trial-user to isolate them (see docs/service.md)."
        )
    os.environ.pop(_ENV_DB_PASSWORD, None)  # read: children never see it
    service = ExperimentService(settings)
    asyncio.run(_serve_async(service, args))
    return 0


async def _serve_async(service: Any, args: argparse.Namespace) -> None:
    from aiohttp import web

    log = logging.getLogger("nni_ts.service")
    resumed = await service.start()
    if resumed:
        log.info("Re-attached to %d running experiment(s): %s", len(resumed), ", ".join(resumed))
    runner = web.AppRunner(service.app(), access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, args.port, reuse_address=True)
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await service.close(stop_experiments=not resumed)
        raise UserError(f"Cannot listen on {args.host}:{args.port}: {exc.strerror}.") from None
    port = runner.addresses[0][1]
    print(f"nni-ts service listening on http://{args.host}:{port} (database {service.db.url_redacted})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("Shutting down%s.", " and stopping experiments" if args.stop_on_exit else "; trials keep running")
    await runner.cleanup()
    await service.close(stop_experiments=args.stop_on_exit)
    if not args.stop_on_exit:
        # Crash-only shutdown: exit before asyncio.run would cancel the experiments' tasks (which
        # would cancel their trials). Trials keep running; the next service re-attaches to them,
        # and everything they reported is in the databases already.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
