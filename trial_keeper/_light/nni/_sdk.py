"""The trial-side API of the light ``nni`` module. Standard library only, Python 3.8+.

As NNI 3.0: run by a platform (``NNI_PLATFORM`` set), parameters come from ``$NNI_SYS_DIR/parameter.cfg``
on the first ``get_next_parameter()`` call (later calls return None) and results go to the manager.
Run by hand (standalone mode: no ``NNI_PLATFORM``), ``get_next_parameter()`` returns ``{}`` and results
are printed.
"""

import json
import math
import os
import sys
import threading

_lock = threading.Lock()
_params = None  # the parameter record (a dict with "parameter_id" and "parameters"), once received
_received = 0  # parameter records received (NNI hands out one per trial)
_intermediate_seq = 0
_metrics_file = None
_warned = False


def _env(name, default=None):
    return os.environ.get(name, default)


def _standalone():
    return _env("NNI_PLATFORM") in (None, "unittest")


def get_next_parameter():
    """The hyper-parameters of this trial (a dict), from ``$NNI_SYS_DIR/parameter.cfg``.

    Each trial gets one set: a second call returns None, as NNI's does. Outside an experiment it
    returns ``{}`` (NNI's standalone mode).
    """
    global _params, _received, _warned
    if _standalone():
        if not _warned:
            _warned = True
            sys.stderr.write(
                "[nni] Running trial code without an experiment: parameters are {} and results are printed.\n"
            )
        _params = {"parameter_id": None, "parameters": {}}
        return {}
    with _lock:
        if _received > 0:
            return None
        _received += 1
    path = os.path.join(_env("NNI_SYS_DIR", "."), "parameter.cfg")
    with open(path, "r", encoding="utf-8") as fh:
        record = json.load(fh)
    if not isinstance(record, dict) or "parameters" not in record:
        raise ValueError("%s does not hold a parameter record." % path)
    _params = record
    return record["parameters"]


def get_next_parameters():
    """Alias of :func:`get_next_parameter`."""
    return get_next_parameter()


def get_current_parameter(tag=None):
    """The current hyper-parameters, or one of them by name. None before ``get_next_parameter()``."""
    if _params is None:
        return None
    params = _params.get("parameters")
    if tag is None:
        return params
    return params[tag]


def get_experiment_id():
    return _env("NNI_EXP_ID") or "STANDALONE"


def get_trial_id():
    return _env("NNI_TRIAL_JOB_ID") or "STANDALONE"


def get_sequence_id():
    value = _env("NNI_TRIAL_SEQ_ID")
    return int(value) if value is not None else 0


def overwrite_intermediate_seq(value):
    """Set the sequence number of the next intermediate result."""
    global _intermediate_seq
    if not isinstance(value, int):
        raise TypeError("the sequence must be an int")
    _intermediate_seq = value


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
    if _env("NNI_PLATFORM") == "local" and _env("REUSE_MODE") not in ("true", "True"):
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
    else:
        with _lock:
            sys.stdout.write("NNISDK_MEb'" + record_text + "'\n")
            sys.stdout.flush()


def _report(kind, sequence, metric):
    if _standalone():
        # NNI's standalone mode logs what a trial reports instead of sending it.
        shown = _dumps(metric)
        if kind == "FINAL":
            sys.stdout.write("[nni] Final result: %s\n" % shown)
        else:
            sys.stdout.write("[nni] Intermediate result: %s  (Index %d)\n" % (shown, sequence))
        sys.stdout.flush()
        return
    parameter_id = _params.get("parameter_id") if isinstance(_params, dict) else None
    record = json.dumps(
        {
            "parameter_id": parameter_id,
            "trial_job_id": _env("NNI_TRIAL_JOB_ID"),
            "type": kind,
            "sequence": sequence,
            "value": _dumps(metric),
        }
    )
    _send(record)


def report_intermediate_result(metric):
    """Report one intermediate result (a number, or a dict with a ``default`` number)."""
    global _intermediate_seq
    with _lock:
        seq = _intermediate_seq
        _intermediate_seq += 1
    _report("PERIODICAL", seq, metric)


def report_final_result(metric):
    """Report the trial's final result (a number, or a dict with a ``default`` number)."""
    _report("FINAL", 0, metric)
