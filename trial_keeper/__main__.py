"""``python -m trial_keeper [options] -- COMMAND...``: run one trial and report it. See ``--help``."""

import argparse
import os
import shlex
import sys

from . import __version__
from .keeper import Keeper, KeeperConfig, KeeperError

ENV_PREFIX = "NNI_TS_KEEPER_"

_DESCRIPTION = """Run one trial's command in its own process group, with NNI's environment and the
light nni module. Its stdout and stderr are copied to files in the trial directory; every metric
record it prints is journaled (fsync'd) and posted to the nni-ts cluster server until acknowledged.
Every option can also come from an environment variable (shown in brackets), so that a pod spec can
set them. The keeper exits with the trial's exit code (128+N if it was killed by signal N)."""


def _env(name, default=None):
    # type: (str, str | None) -> str | None
    return os.environ.get(ENV_PREFIX + name, default)


def _attempt(text):
    # type: (str) -> int | None
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number or 'auto', not %r" % text) from None


def build_parser():
    # type: () -> argparse.ArgumentParser
    p = argparse.ArgumentParser(prog="python -m trial_keeper", description=_DESCRIPTION)
    p.add_argument("--version", action="version", version=__version__)
    p.add_argument("--trial-id", default=_env("TRIAL_ID"), help="the trial id [NNI_TS_KEEPER_TRIAL_ID]")
    p.add_argument(
        "--attempt",
        type=_attempt,
        default=_env("ATTEMPT", "1") or "1",
        help="attempt number, default 1; 'auto': the next number not used in the trial directory (a pod "
        "that a Job created in place of a disrupted one runs the trial again) [ATTEMPT]",
    )
    p.add_argument("--trial-dir", default=_env("TRIAL_DIR"), help="the trial directory (NNI_SYS_DIR) [TRIAL_DIR]")
    p.add_argument("--output-dir", default=_env("OUTPUT_DIR"), help="NNI_OUTPUT_DIR, default the trial dir")
    p.add_argument("--code-dir", default=_env("CODE_DIR"), help="working directory of the command, default cwd")
    p.add_argument("--server-url", default=_env("SERVER_URL"), help="the cluster server; none: journal only")
    p.add_argument("--token", default=_env("TOKEN"), help="the trial's bearer token [TOKEN]")
    p.add_argument("--token-file", default=_env("TOKEN_FILE"), help="a file holding the token [TOKEN_FILE]")
    p.add_argument(
        "--ca-file",
        default=_env("CA_FILE"),
        help="a PEM file of the CA to verify an https:// server against, default the system's [CA_FILE]",
    )
    p.add_argument("--platform", default=_env("PLATFORM", "remote"), help="NNI_PLATFORM, default remote")
    p.add_argument("--experiment-id", default=_env("EXPERIMENT_ID", ""), help="NNI_EXP_ID [EXPERIMENT_ID]")
    p.add_argument(
        "--sequence-id", type=int, default=int(_env("SEQUENCE_ID", "0") or 0), help="NNI_TRIAL_SEQ_ID [SEQUENCE_ID]"
    )
    p.add_argument(
        "--heartbeat", type=float, default=float(_env("HEARTBEAT", "5") or 5), help="seconds between heartbeats"
    )
    p.add_argument(
        "--grace", type=float, default=float(_env("GRACE", "10") or 10), help="seconds from SIGTERM to SIGKILL"
    )
    p.add_argument(
        "--report-timeout",
        type=float,
        default=float(_env("REPORT_TIMEOUT", "300") or 300),
        help="seconds to keep trying to report the exit after the trial ended",
    )
    p.add_argument("--no-passthrough", action="store_true", help="do not copy the trial's output to the keeper's own")
    p.add_argument(
        "--quiet-start",
        action="store_true",
        help="no report at the start: the first one carries records, the exit or a heartbeat (for platforms "
        "that know by themselves that the trial started)",
    )
    p.add_argument(
        "--log-frames",
        action="store_true",
        default=(_env("LOG_FRAMES", "") or "") not in ("", "0"),
        help="also write each record and the exit to stdout as frames keyed by the token, for a platform that "
        "reads them back from the log (Kubernetes without shared storage) [LOG_FRAMES]",
    )
    p.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help="the command, after '--': one argument is a shell command line, several are quoted and joined [COMMAND]",
    )
    return p


def main(argv=None):
    # type: (list[str] | None) -> int
    parser = build_parser()
    args = parser.parse_args(argv)
    words = list(args.command)
    if words and words[0] == "--":
        words = words[1:]
    if len(words) == 1:
        command = words[0]
    elif words:
        command = " ".join(shlex.quote(w) for w in words)
    else:
        command = _env("COMMAND", "") or ""
    token = args.token
    if not token and args.token_file:
        try:
            with open(args.token_file, "r") as fh:
                token = fh.read().strip()
        except (IOError, OSError) as exc:
            parser.exit(2, "trial_keeper: cannot read the token file %r: %s.\n" % (args.token_file, exc))
    if not args.trial_dir:
        parser.exit(2, "trial_keeper: the trial directory is required (--trial-dir or NNI_TS_KEEPER_TRIAL_DIR).\n")
    try:
        config = KeeperConfig(
            trial_id=args.trial_id or "",
            trial_dir=args.trial_dir,
            command=command,
            attempt=args.attempt,
            server_url=args.server_url,
            token=token,
            heartbeat=args.heartbeat,
            grace=args.grace,
            report_timeout=args.report_timeout,
            platform=args.platform,
            experiment_id=args.experiment_id,
            sequence_id=args.sequence_id,
            output_dir=args.output_dir,
            code_dir=args.code_dir,
            passthrough=not args.no_passthrough,
            quiet_start=args.quiet_start,
            ca_file=args.ca_file,
            log_frames=args.log_frames,
        )
        return Keeper(config).run()
    except KeeperError as exc:
        parser.exit(2, "trial_keeper: %s\n" % exc)
    return 2


if __name__ == "__main__":
    sys.exit(main())
