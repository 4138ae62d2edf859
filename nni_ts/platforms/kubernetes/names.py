"""Names and labels within Kubernetes' rules (and FrameworkController's stricter ones).

* Object names of jobs, ConfigMaps and Secrets: RFC 1123 DNS labels (at most 63 lowercase letters, digits
  and ``-``), so that the pods and Services the operators derive from them stay valid too.
* Framework names: ``^[a-z0-9]{1,63}$`` (FrameworkController's naming convention: no ``-`` at all).
* Label values: at most 63 characters, ``[A-Za-z0-9][-A-Za-z0-9_.]*[A-Za-z0-9]``; trial ids are mixed-case,
  so the exact id is kept in a label when it fits and in an annotation always.

Lowercasing a mixed-case trial id could make two trials collide (``aB1`` and ``Ab1``), so every derived
name ends with a short hash of the exact experiment and trial ids.
"""

from __future__ import annotations

import hashlib
import re

__all__ = [
    "ANNOTATION_TRIAL",
    "LABEL_EXPERIMENT",
    "LABEL_MANAGED_BY",
    "LABEL_ROLE",
    "LABEL_TRIAL",
    "MANAGED_BY",
    "TRAINJOB_NAME_MAX",
    "anchor_name",
    "dns_label",
    "framework_name",
    "is_dns_label",
    "is_label_value",
    "is_rfc1035_label",
    "job_name",
    "label_value",
    "secret_name",
    "trainjob_name",
]

LABEL_EXPERIMENT = "nni-ts.io/experiment"
LABEL_TRIAL = "nni-ts.io/trial"
LABEL_ROLE = "nni-ts.io/role"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "nni-ts"
ANNOTATION_TRIAL = "nni-ts.io/trial-id"
ANNOTATION_SEQUENCE = "nni-ts.io/sequence-id"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
_FC_NAME = re.compile(r"^[a-z0-9]{1,63}$")
#: TrainJob names (the CRD's CEL rule): an RFC 1035 label, starting with a letter.
_RFC1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def is_dns_label(text: str) -> bool:
    return bool(_DNS_LABEL.match(text))


def is_label_value(text: str) -> bool:
    return len(text) <= 63 and bool(_LABEL_VALUE.match(text))


def is_framework_name(text: str) -> bool:
    return bool(_FC_NAME.match(text))


def _hash(*parts: str, length: int = 6) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:length]


def _squash(text: str, allowed: str) -> str:
    """Lowercase ``text`` and drop every character not in ``allowed`` (a regex class body)."""
    return re.sub(f"[^{allowed}]+", "", text.lower())


def dns_label(*parts: str, suffix: str = "", max_len: int = 63) -> str:
    """A valid DNS label made of ``parts`` joined by ``-`` (each lowercased and cleaned), cut to fit."""
    cleaned = [p for p in (_squash(part, "a-z0-9-").strip("-") for part in parts) if p]
    base = "-".join(cleaned) or "x"
    room = max_len - (len(suffix) + 1 if suffix else 0)
    base = base[:room].strip("-") or "x"
    name = f"{base}-{suffix}" if suffix else base
    if not is_dns_label(name):  # pragma: no cover - the construction above makes it valid
        raise ValueError(f"cannot make a DNS label from {parts!r}")
    return name


def label_value(text: str) -> str:
    """``text`` itself if it is a valid label value, else a cleaned prefix plus a hash of it."""
    if is_label_value(text):
        return text
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "", text)[:54].strip("-_.")
    return f"{cleaned}-{_hash(text, length=8)}" if cleaned else _hash(text, length=8)


def job_name(experiment_id: str, trial_id: str) -> str:
    """The TFJob / PyTorchJob name of a trial: ``nni-<exp>-<trial>-<hash>``, at most 40 characters, so
    that the operator's pod and Service names (``<job>-worker-12``) stay within 63."""
    return dns_label("nni", experiment_id[:8], trial_id[:16], suffix=_hash(experiment_id, trial_id), max_len=40)


def framework_name(experiment_id: str, trial_id: str) -> str:
    """The Framework name of a trial: lowercase letters and digits only, at most 40 characters."""
    exp = _squash(experiment_id, "a-z0-9")[:8]
    trial = _squash(trial_id, "a-z0-9")[:16]
    name = f"nni{exp}t{trial}{_hash(experiment_id, trial_id)}"[:40]
    if not is_framework_name(name):  # pragma: no cover
        raise ValueError(f"cannot make a Framework name from {experiment_id!r} and {trial_id!r}")
    return name


def is_rfc1035_label(text: str) -> bool:
    return bool(_RFC1035.match(text))


#: The longest TrainJob name nni-ts makes: its JobSet's Jobs are ``<name>-<replicated job>-<index>`` and
#: their pods' host names ``<job>-<pod index>``, all within 63 characters for a replicated job name of up
#: to 16 characters (``node``, ``trainer``, ``launcher``...).
TRAINJOB_NAME_MAX = 40


def trainjob_name(experiment_id: str, trial_id: str) -> str:
    """The TrainJob name of a trial: ``nni-<exp>-<trial>-<hash>``, starting with a letter (the CRD's rule),
    at most :data:`TRAINJOB_NAME_MAX` characters."""
    name = dns_label("nni", experiment_id[:8], trial_id[:16], suffix=_hash(experiment_id, trial_id), max_len=40)
    if not is_rfc1035_label(name):  # pragma: no cover - "nni" first, a hash last
        raise ValueError(f"cannot make a TrainJob name from {experiment_id!r} and {trial_id!r}")
    return name


def anchor_name(experiment_id: str) -> str:
    """The experiment's anchor ConfigMap: every object of the experiment names it as its owner."""
    return dns_label("nni-ts", experiment_id[:24], suffix=_hash(experiment_id))


def secret_name(experiment_id: str, purpose: str, key: str = "") -> str:
    """A Secret of the experiment (registry credentials, storage keys)."""
    return dns_label("nni-ts", experiment_id[:16], purpose[:16], suffix=_hash(experiment_id, purpose, key))
