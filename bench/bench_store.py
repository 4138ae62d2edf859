"""The store at scale: 10,000 trials with 100 metrics each.

Times ``nni-ts trial ls`` and ``nni-ts experiment export`` (end to end, as a user runs them) against
a bare Python process reading the same rows with sqlite3, and measures the peak RSS of a manager that
resumes the experiment and runs 10 more trials (against a bare ``python3 -c pass``). Targets: each
command under 1 s, the manager under 150 MB.

    python bench/bench_store.py [--trials 10000] [--metrics 100]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TRIVIAL_TRIAL  # noqa: E402

from nni_ts.storage import open_store  # noqa: E402


def populate(home: Path, code: Path, trials: int, metrics: int) -> None:
    config = {
        "experimentName": "store-bench",
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}, "y": {"_type": "choice", "_value": [1, 2, 3]}},
        "trialCommand": "python3 trial.py",
        "trialCodeDirectory": str(code),
        "trialConcurrency": 4,
        "maxTrialNumber": trials,
        "tuner": {"name": "Random", "classArgs": {"seed": 1}},
        "trainingService": {"platform": "local"},
    }
    store = open_store(home / "nni-ts.db")
    store.create_experiment(
        "bench", name="store-bench", platform="local", config=config, working_dir=home / "exp", status="DONE"
    )
    db = store._db
    db.execute("BEGIN")
    now = int(time.time() * 1000)
    trial_rows = []
    metric_rows = []
    for i in range(trials):
        tid = f"t{i:05d}"
        final = json.dumps({"type": "FINAL", "sequence": metrics - 1, "value": json.dumps(i / trials)})
        trial_rows.append(
            (
                "bench",
                tid,
                i,
                i,
                1,
                json.dumps({"x": i / trials, "y": i % 3 + 1}),
                "SUCCEEDED",
                now,
                now,
                now,
                0,
                None,
                0,
                i / trials,
                final,
                metrics,
                None,
            )
        )
        for s in range(metrics - 1):
            data = json.dumps({"type": "PERIODICAL", "sequence": s, "value": json.dumps(s / metrics)})
            metric_rows.append(("bench", tid, s, "PERIODICAL", s / metrics, data, now))
        metric_rows.append(("bench", tid, metrics - 1, "FINAL", i / trials, final, now))
    db.executemany("INSERT INTO trials VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", trial_rows)
    db.executemany("INSERT INTO metrics VALUES (?,?,?,?,?,?,?)", metric_rows)
    db.execute("COMMIT")
    store.close()


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def best_of(n: int, cmd: list[str], env: dict[str, str]) -> float:
    return min(timed(cmd, env) for _ in range(n))


def child_rss(cmd: list[str], env: dict[str, str]) -> float:
    """Peak RSS in MB of one child run (the command runs in a fresh helper so the figure is its own)."""
    probe = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", probe, *cmd], env=env, check=True, capture_output=True, text=True)
    return int(out.stdout.strip()) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--metrics", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home, code = Path(tmp) / "home", Path(tmp) / "code"
        home.mkdir()
        code.mkdir()
        (code / "trial.py").write_text(TRIVIAL_TRIAL)
        t0 = time.perf_counter()
        populate(home, code, args.trials, args.metrics)
        fill = time.perf_counter() - t0
        size = (home / "nni-ts.db").stat().st_size / 1e6
        env = dict(os.environ, NNI_TS_HOME=str(home))
        cli = [sys.executable, "-m", "nni_ts.cli"]
        bare_read = [
            sys.executable,
            "-c",
            "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
            "rows = db.execute('SELECT * FROM trials WHERE experiment_id=?', ('bench',)).fetchall(); "
            "print(len(rows))",
            str(home / "nni-ts.db"),
        ]
        t_bare = best_of(3, bare_read, env)
        t_ls = best_of(3, [*cli, "trial", "ls", "bench", "--json"], env)
        t_csv = best_of(3, [*cli, "experiment", "export", "bench", "--format", "csv"], env)
        t_json = best_of(3, [*cli, "experiment", "export", "bench", "--format", "json"], env)
        rss_bare = child_rss([sys.executable, "-c", "pass"], env)
        extend = [*cli, "extend", "bench", "--max-trial-number", str(args.trials + 10), "--quiet"]
        t0 = time.perf_counter()
        rss_mgr = child_rss(extend, env)
        t_extend = time.perf_counter() - t0
        with open_store(home / "nni-ts.db") as store:
            n = len(store.list_trials("bench"))
            assert n == args.trials + 10, n
    print(f"store: {args.trials} trials x {args.metrics} metrics = {size:.0f} MB, filled in {fill:.1f} s")
    print(
        f"manager resuming the store and running 10 more trials: {t_extend:.1f} s, "
        f"own peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB in the bench process"
    )
    print(
        f"store at scale: trial ls {t_ls:.2f} s, export csv {t_csv:.2f} s, export json {t_json:.2f} s "
        f"(bare sqlite3 read of the same trials {t_bare:.2f} s; target < 1 s); manager peak RSS {rss_mgr:.0f} MB "
        f"(bare python {rss_bare:.0f} MB; target < 150 MB)"
    )


if __name__ == "__main__":
    main()
