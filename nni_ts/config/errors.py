"""Turning pydantic validation errors into messages a user can act on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pydantic

__all__ = ["format_loc", "format_validation_error", "is_secret_key", "redact"]


def format_loc(loc: Sequence[int | str]) -> str:
    """``("machineList", 0, "port")`` -> ``machineList[0].port``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


_SECRET_ENDINGS = (
    "password",
    "passwd",
    "passphrase",
    "token",
    "secret",
    "accountkey",
    "storagekey",
    "accesskey",
    "apikey",
    "privatekey",
)


def is_secret_key(name: object) -> bool:
    """Whether a config key holds a secret (password, passphrase, token, storage key...)."""
    if not isinstance(name, str):
        return False
    key = name.lower().replace("_", "").replace("-", "")
    return key == "pass" or key.endswith(_SECRET_ENDINGS)


def redact(value: Any) -> Any:
    """``value`` with every secret-named entry of every mapping inside it replaced by ``<hidden>``."""
    if isinstance(value, dict):
        return {k: "<hidden>" if is_secret_key(k) else redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def format_validation_error(exc: pydantic.ValidationError) -> str:
    """One line per problem: the key path, then what was wrong and what was expected."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = format_loc([p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))])
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling; it is not a field of this section)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = err["msg"]
            if "input" in err and err["type"] not in ("missing",):
                secret = any(is_secret_key(p) for p in err["loc"])
                shown = "<hidden>" if secret else repr(redact(err["input"]))
                if len(shown) > 80:
                    shown = shown[:77] + "..."
                msg += f" (got {shown})"
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines) if len(lines) == 1 else "\n  " + "\n  ".join(lines)
