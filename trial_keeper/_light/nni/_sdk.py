"""The trial-side API of the light ``nni`` module. Standard library only, Python 3.8+."""

import json
import math
import os
import sys
import threading

_lock = threading.Lock()
_params = None  # the last parameter.cfg content (a dict), once read
_intermediate_seq = 0
_metrics_file = None


def _env(name, default=None):
    return os.environ.get(name, default)


def get_next_parameter():
    """The hyper-parameters of this trial (a dict). Reads ``$NNI_SYS_DIR/parameter.cfg``."""
    global _params
    sys_dir = _env("NNI_SYS_DIR")
    if sys_dir is None:
        # Not run by a platform: behave like NNI's standalone mode.
        _params = {"parameter_id": None, "parameters": {}}
        return {}
    path = os.path.join(sys_dir, "parameter.cfg")
    with open(path, "r", encoding="utf-8") as fh:
        _params = json.load(fh)
    params = _params.get("parameters") if isinstance(_params, dict) else None
    return params if params is not None else {}


def get_current_parameter(tag=None):
    """The current hyper-parameters, or one of them by name."""
    if _params is None:
        return None
    params = _params.get("parameters") or {}
    return params if tag is None else params[tag]


def get_experiment_id():
    return _env("NNI_EXP_ID", "STANDALONE")


def get_trial_id():
    return _env("NNI_TRIAL_JOB_ID", "STANDALONE")


def get_sequence_id():
    return int(_env("NNI_TRIAL_SEQ_ID", "0"))


def _to_jsonable(value):
    # numpy scalars and arrays, without importing numpy
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        return value.item()
    if hasattr(value, "tolist") and callable(value.tolist):
        return value.tolist()
    raise TypeError("Object of type %s is not JSON serializable" % type(value).__name__)


def _dumps(value):
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)  # NaN, Infinity, -Infinity as NNI's json_tricks writes them
    return json.dumps(value, default=_to_jsonable)


def _send(record_text):
    data = record_text.encode("utf-8")
    if len(data) + 1 >= 1000000:
        raise ValueError("A metric record must be under 1,000,000 bytes.")
    if _env("NNI_PLATFORM") == "local" and _env("REUSE_MODE") != "true":
        global _metrics_file
        with _lock:
            if _metrics_file is None:
                nni_dir = os.path.join(_env("NNI_SYS_DIR", "."), ".nni")
                if not os.path.isdir(nni_dir):
                    os.makedirs(nni_dir)
                _metrics_file = open(os.path.join(nni_dir, "metrics"), "ab")
            payload = data + b"\n"
            _metrics_file.write(b"ME%06d" % len(payload) + payload)
            _metrics_file.flush()
    elif _env("NNI_PLATFORM") is None:
        sys.stdout.write("[nni] metric (not run by a platform): %s\n" % record_text)
        sys.stdout.flush()
    else:
        with _lock:
            sys.stdout.write("NNISDK_MEb'" + record_text + "'\n")
            sys.stdout.flush()


def _record(kind, sequence, metric):
    parameter_id = _params.get("parameter_id") if isinstance(_params, dict) else None
    return json.dumps(
        {
            "parameter_id": parameter_id,
            "trial_job_id": get_trial_id(),
            "type": kind,
            "sequence": sequence,
            "value": _dumps(metric),
        }
    )


def report_intermediate_result(metric):
    """Report one intermediate result (a number, or a dict with a ``default`` key)."""
    global _intermediate_seq
    with _lock:
        seq = _intermediate_seq
        _intermediate_seq += 1
    _send(_record("PERIODICAL", seq, metric))


def report_final_result(metric):
    """Report the trial's final result (a number, or a dict with a ``default`` key)."""
    _send(_record("FINAL", 0, metric))
