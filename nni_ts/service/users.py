"""Users, API tokens, quotas and the audit log, in the service database.

A token is ``nts_`` followed by 32 random bytes (URL-safe base64). Only its SHA-256 is stored: a
token has 256 bits of entropy, so a fast hash is enough and lookups stay one indexed query. A token
is shown once, when it is made (``nni-ts users add`` / ``users token --rotate``).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..models import now_ms
from .db import Database

__all__ = [
    "NAME_PATTERN",
    "User",
    "add_user",
    "archived_name",
    "audit",
    "check_name",
    "hash_token",
    "list_users",
    "new_token",
    "remove_user",
    "rotate_token",
    "user_by_token",
]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$"
_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class User:
    """A service user. ``max_trials`` / ``max_gpus`` of None mean the service's defaults."""

    name: str
    is_admin: bool
    max_trials: int | None
    max_gpus: int | None
    created_ms: int


def check_name(value: Any, what: str) -> str:
    """A user or workspace name: letters, digits, ``_`` and ``-``, at most 40 characters (matched in
    full: ``$`` alone would let a trailing newline through)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        shown = repr(value) if len(repr(value)) < 60 else repr(value)[:57] + "..."
        raise UserError(
            f"{what} must be 1 to 40 letters, digits, '_' or '-' (starting with a letter or digit), got {shown}."
        )
    return value


def new_token() -> str:
    return "nts_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", errors="surrogateescape")).hexdigest()


def _user(row: tuple[Any, ...]) -> User:
    return User(name=row[0], is_admin=bool(row[1]), max_trials=row[2], max_gpus=row[3], created_ms=row[4])


_COLS = "name, is_admin, max_trials, max_gpus, created_ms"


#: The audit log's INSERT, its arguments from :func:`audit_args`.
AUDIT_INSERT = "INSERT INTO svc_audit (at_ms, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)"


def audit_args(actor: str, action: str, target: str, detail: dict[str, Any] | None = None) -> tuple[Any, ...]:
    """The arguments of :data:`AUDIT_INSERT` for one change. ``detail`` must hold no secret."""
    return now_ms(), actor, action, target, json.dumps(detail or {}, sort_keys=True, default=str)


async def audit(db: Any, actor: str, action: str, target: str, detail: dict[str, Any] | None = None) -> None:
    """Record one change (who, what, on what, when). ``detail`` must hold no secret."""
    await db.execute(AUDIT_INSERT, *audit_args(actor, action, target, detail))


async def get_user(db: Database, name: str) -> User | None:
    row = await db.fetchrow(f"SELECT {_COLS} FROM svc_users WHERE name = $1", name)
    return _user(row) if row else None


async def user_by_token(db: Database, token: str) -> User | None:
    row = await db.fetchrow(f"SELECT {_COLS} FROM svc_users WHERE token_hash = $1", hash_token(token))
    return _user(row) if row else None


async def user_by_token_archiving(db: Database, token: str) -> tuple[User | None, bool]:
    """:func:`user_by_token`, and whether a removed user of that name is still being archived (what a
    write of the user's files waits for), in one statement."""
    row = await db.fetchrow(
        f"SELECT {_COLS}, EXISTS (SELECT 1 FROM svc_archives a WHERE a.name = u.name AND a.done = 0) "
        "FROM svc_users u WHERE u.token_hash = $1",
        hash_token(token),
    )
    return (_user(row), bool(row[5])) if row else (None, False)


async def list_users(db: Database) -> list[User]:
    return [_user(r) for r in await db.fetch(f"SELECT {_COLS} FROM svc_users ORDER BY name")]


async def add_user(
    db: Database,
    name: str,
    *,
    admin: bool = False,
    max_trials: int | None = None,
    max_gpus: int | None = None,
    actor: str = "cli",
    with_token: bool = True,
) -> str | None:
    """Create a user; return its new token (None with ``with_token=False``)."""
    check_name(name, "A user name")
    for value, flag in ((max_trials, "--max-trials"), (max_gpus, "--max-gpus")):
        if value is not None and value < 0:
            raise UserError(f"{flag} must be 0 or more, got {value}.")
    token = new_token() if with_token else None
    async with db.transaction() as tx:
        if await tx.fetchrow("SELECT name FROM svc_users WHERE name = $1", name):
            raise UserError(
                f"The user {name!r} already exists; `nni-ts users token {name} --rotate` makes a new token."
            )
        await tx.execute(
            "INSERT INTO svc_users (name, is_admin, token_hash, max_trials, max_gpus, created_ms) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            name,
            int(admin),
            hash_token(token) if token else None,
            max_trials,
            max_gpus,
            now_ms(),
        )
        await audit(tx, actor, "user.add", name, {"admin": admin, "maxTrials": max_trials, "maxGpus": max_gpus})
    return token


async def set_quota(
    db: Database, name: str, *, max_trials: int | None, max_gpus: int | None, actor: str = "cli"
) -> None:
    if await get_user(db, name) is None:
        raise UserError(f"There is no user {name!r}.")
    await db.execute("UPDATE svc_users SET max_trials = $1, max_gpus = $2 WHERE name = $3", max_trials, max_gpus, name)
    await audit(db, actor, "user.quota", name, {"maxTrials": max_trials, "maxGpus": max_gpus})


async def rotate_token(db: Database, name: str, *, actor: str = "cli") -> str:
    """A new token for ``name``; the old one stops working at once."""
    token = new_token()
    changed = await db.execute("UPDATE svc_users SET token_hash = $1 WHERE name = $2", hash_token(token), name)
    if not changed:
        raise UserError(f"There is no user {name!r}; add it with `nni-ts users add {name}`.")
    await audit(db, actor, "user.token", name)
    return token


def archived_name(name: str, at_ms: int) -> str:
    """The owner name a removed user's experiments and files are kept under (never a valid user name)."""
    return f"{name}~removed-{at_ms}"


async def remove_user(db: Database, name: str, *, actor: str = "cli", delete: bool = False) -> str:
    """Remove a user: its token stops working, its running experiments are stopped (by the replica that
    runs them) and what it owned is archived under :func:`archived_name` for an admin to see, or
    deleted with ``delete=True``. A new user of the same name starts empty. Returns the archive name."""
    check_name(name, "A user name")
    at = now_ms()
    archived = archived_name(name, at)
    async with db.transaction() as tx:
        changed = await tx.execute("DELETE FROM svc_users WHERE name = $1", name)
        if not changed:
            raise UserError(f"There is no user {name!r}.")
        await tx.execute(
            "INSERT INTO svc_stop_requests (experiment_id, reason, at_ms) "
            "SELECT id, $1, $2 FROM svc_experiments WHERE user_name = $3 AND status = $4 "
            "ON CONFLICT (experiment_id) DO NOTHING",
            f"Its user {name} was removed.",
            at,
            name,
            "RUNNING",
        )
        await tx.execute("UPDATE svc_experiments SET user_name = $1 WHERE user_name = $2", archived, name)
        await tx.execute("UPDATE svc_workspaces SET user_name = $1 WHERE user_name = $2", archived, name)
        await tx.execute(
            "INSERT INTO svc_archives (name, archived_as, delete_files, at_ms, done) VALUES ($1, $2, $3, $4, 0)",
            name,
            archived,
            int(delete),
            at,
        )
        await audit(tx, actor, "user.remove", name, {"archivedAs": archived, "delete": delete})
    return archived
