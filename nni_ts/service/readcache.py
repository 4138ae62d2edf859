"""The answers to the two requests clients poll, kept while nothing they were read from has changed.

``GET /experiments/{id}`` (status, trial counts, best trial) and ``GET /experiments/{id}/metrics``
are what dashboards, notebooks and CLIs ask again and again, mostly for an experiment that has not
changed since. On SQLite the answer is read in-process, a fraction of a millisecond. On PostgreSQL
each one is a round trip to the database server through a busy event loop; this cache answers the
repeated ones from memory, on the replica that runs the experiment.

What an answer depends on, and what tells the cache it changed:

* the experiment's trials and metrics: written only by the replica that runs the experiment (its
  engine's :class:`~nni_ts.storage.base.PostgresStorage`), which reports every write *after* its
  COMMIT (:meth:`ReadCache.changed`). Only experiments live on this replica are cached;
* the experiment's row (``svc_experiments``: status, owner, config): written by any replica or by
  ``nni-ts`` commands. A trigger sends a notification (``NOTIFY nni_ts_svc``) with its id; this
  replica's own writes also mark it changed at once, so a client reads its own writes;
* the token and the user (``svc_users``: a removed user, a rotated token, an admin flag): any change
  to that table, from anywhere, empties the whole cache through the same notification channel.

The cache is on only while this replica is listening on that channel (:class:`ChangeFeed`): when the
listening connection is lost it is emptied and off (every request reads the database) until the
listener is back. Between another process's COMMIT and the arrival of its notification (about a
millisecond on one host) a request may still be answered as before that change, exactly as if it had
arrived a millisecond earlier.

Every answer is stamped, before its read started, with the versions it depends on; a write bumps the
version after its COMMIT, so an answer read before or during a write is never served after it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections import OrderedDict
from typing import Any, Literal

__all__ = ["CHANNEL", "ChangeFeed", "ReadCache", "notify_schema"]

log = logging.getLogger(__name__)

#: The notification channel of changes to the service's tables.
CHANNEL = "nni_ts_svc"
#: The listening connection's ``application_name`` (as ``pg_stat_activity`` shows it).
APPLICATION = "nni-ts read-cache feed"

Kind = Literal["details", "metrics"]


def notify_schema() -> list[str]:
    """PostgreSQL statements that make every change to ``svc_users`` and ``svc_experiments``, by any
    client, send a notification on :data:`CHANNEL` (run under the schema's advisory lock).

    Not on INSERT: a new row cannot make a kept answer stale (only answers of existing experiments,
    for existing tokens, are kept). And PostgreSQL serialises the COMMITs of notifying transactions
    (one lock per database, held through the WAL flush): 50 experiments created at once took twice
    as long when each one's INSERT notified."""
    return [
        f"""CREATE OR REPLACE FUNCTION nni_ts_svc_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_TABLE_NAME = 'svc_experiments' THEN
                IF TG_OP = 'DELETE' THEN
                    PERFORM pg_notify('{CHANNEL}', 'e:' || OLD.id);
                ELSE
                    PERFORM pg_notify('{CHANNEL}', 'e:' || NEW.id);
                END IF;
            ELSE
                PERFORM pg_notify('{CHANNEL}', 'all');
            END IF;
            RETURN NULL;
        END $$""",
        "DROP TRIGGER IF EXISTS nni_ts_svc_users_changed ON svc_users",
        "CREATE TRIGGER nni_ts_svc_users_changed AFTER UPDATE OR DELETE OR TRUNCATE ON svc_users "
        "FOR EACH STATEMENT EXECUTE FUNCTION nni_ts_svc_changed()",
        "DROP TRIGGER IF EXISTS nni_ts_svc_experiments_changed ON svc_experiments",
        "CREATE TRIGGER nni_ts_svc_experiments_changed AFTER UPDATE OR DELETE ON svc_experiments "
        "FOR EACH ROW EXECUTE FUNCTION nni_ts_svc_changed()",
        "DROP TRIGGER IF EXISTS nni_ts_svc_experiments_truncated ON svc_experiments",
        "CREATE TRIGGER nni_ts_svc_experiments_truncated AFTER TRUNCATE ON svc_experiments "
        "FOR EACH STATEMENT EXECUTE FUNCTION nni_ts_svc_changed()",
    ]


class ReadCache:
    """Polled answers by (token hash, path and query), each with the versions it was read at.

    :meth:`get`, :meth:`stamp` and :meth:`put` run on the API loop; :meth:`changed` and :meth:`clear`
    may be called from any thread (the engine's storage reports its commits from the engine thread)."""

    def __init__(self, *, max_entries: int = 4096, max_body: int = 256 * 1024) -> None:
        self.max_entries = max_entries
        #: Larger answers (an experiment's every metric) are not kept.
        self.max_body = max_body
        self._lock = threading.Lock()
        self._clock = 0
        self._epoch = 0
        #: experiment id -> (version of its trials' answers, version of its metrics' answers)
        self._versions: dict[str, tuple[int, int]] = {}
        self._entries: OrderedDict[tuple[str, str], tuple[tuple[int, int], bytes, str]] = OrderedDict()
        self._enabled = False
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self._enabled

    def enable(self) -> None:
        """On (the change feed listens): starts empty."""
        self.clear()
        self._enabled = True

    def disable(self) -> None:
        """Off (the change feed is lost): emptied, every request reads the database."""
        self._enabled = False
        self.clear()

    def changed(self, experiment_id: str, what: str = "experiment") -> None:
        """Something an answer of ``experiment_id`` depends on changed (call after its COMMIT): its
        trials ("trials": the details' counts and best trial), its metrics ("metrics") or anything
        ("experiment": its row, its liveness; both kinds of answer)."""
        with self._lock:
            self._clock += 1
            trials, metrics = self._versions.get(experiment_id, (0, 0))
            if what != "metrics":
                trials = self._clock
            if what != "trials":
                metrics = self._clock
            self._versions[experiment_id] = (trials, metrics)

    def clear(self) -> None:
        """Every answer is stale (a user or a token changed, or the feed came or went)."""
        with self._lock:
            self._epoch += 1
        self._entries.clear()

    def stamp(self, experiment_id: str, kind: Kind) -> tuple[int, int]:
        """The versions an answer read from now on depends on (take it before the read)."""
        trials, metrics = self._versions.get(experiment_id, (0, 0))
        return self._epoch, trials if kind == "details" else metrics

    def get(self, key: tuple[str, str], experiment_id: str, kind: Kind) -> tuple[bytes, str] | None:
        """The kept answer (body, content type) if nothing it depends on changed since it was read."""
        if not self._enabled:
            return None
        entry = self._entries.get(key)
        if entry is None or entry[0] != self.stamp(experiment_id, kind):
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1], entry[2]

    def put(self, key: tuple[str, str], stamp: tuple[int, int], body: bytes, content_type: str) -> None:
        if not self._enabled or len(body) > self.max_body or stamp[0] != self._epoch:
            return
        self._entries[key] = (stamp, body, content_type)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def _set_event(event: asyncio.Event, *_: Any) -> None:
    event.set()


class ChangeFeed:
    """``LISTEN nni_ts_svc`` on a PostgreSQL connection of its own, for a :class:`ReadCache`: the
    cache is on only while listening. A lost connection (the server restarted, the connection was
    terminated, a health check every ``check_interval`` seconds failed) turns it off until the feed
    is listening again (retried with a back-off up to 30 s)."""

    def __init__(self, url: str, cache: ReadCache, *, password: str | None = None, check_interval: float = 2.0):
        self.url = url
        self.cache = cache
        self.password = password
        self.check_interval = check_interval
        #: Set each time the feed starts listening (tests wait for it).
        self.listening = asyncio.Event()
        self.notifications = 0

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.notifications += 1
        if payload.startswith("e:"):
            self.cache.changed(payload[2:])
        else:
            self.cache.clear()

    async def run(self) -> None:
        import asyncpg  # type: ignore[import-untyped]

        backoff = 0.5
        while True:
            try:
                conn = await asyncpg.connect(
                    self.url, password=self.password, timeout=10, server_settings={"application_name": APPLICATION}
                )
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("The read cache is off: cannot listen for changes (%s); retrying in %.0f s.", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            lost = asyncio.Event()
            conn.add_termination_listener(functools.partial(_set_event, lost))
            try:
                await conn.add_listener(CHANNEL, self._notified)
                self.cache.enable()
                self.listening.set()
                backoff = 0.5
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), self.check_interval)
                    except TimeoutError:
                        await conn.execute("SELECT 1", timeout=self.check_interval)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("The read cache is off: the connection listening for changes was lost (%s).", exc)
            finally:
                self.cache.disable()
                self.listening.clear()
                if not conn.is_closed():
                    conn.terminate()
            if lost.is_set():
                log.warning("The read cache is off: the connection listening for changes was closed; reconnecting.")
            await asyncio.sleep(backoff)
