"""``nni.utils`` of the light ``nni`` module: what trials and custom tuners import from it."""

from enum import Enum, unique
from pathlib import Path

__all__ = [
    "ClassArgsValidator",
    "MetricType",
    "NodeType",
    "OptimizeMode",
    "convert_dict2tuple",
    "extract_scalar_history",
    "extract_scalar_reward",
    "merge_parameter",
    "split_index",
]


@unique
class OptimizeMode(Enum):
    """Whether the tuner minimizes or maximizes the trials' results."""

    Minimize = "minimize"
    Maximize = "maximize"


class NodeType:
    ROOT = "root"
    TYPE = "_type"
    VALUE = "_value"
    INDEX = "_index"
    NAME = "_name"


class MetricType:
    FINAL = "FINAL"
    PERIODICAL = "PERIODICAL"
    REQUEST_PARAMETER = "REQUEST_PARAMETER"


def split_index(params):
    """``params`` without the ``_index`` bookkeeping of nested choices."""
    if isinstance(params, dict):
        if NodeType.INDEX in params:
            return split_index(params[NodeType.VALUE])
        return {key: split_index(value) for key, value in params.items()}
    return params


def extract_scalar_reward(value, scalar_key="default"):
    """The number of a result: the value itself, or its ``scalar_key`` entry. RuntimeError otherwise."""
    if isinstance(value, (float, int)):
        return value
    if isinstance(value, dict) and scalar_key in value and isinstance(value[scalar_key], (float, int)):
        return value[scalar_key]
    raise RuntimeError(
        "Incorrect final result: the final result should be float/int, "
        'or a dict which has a key named "default" whose value is float/int.'
    )


def extract_scalar_history(trial_history, scalar_key="default"):
    """:func:`extract_scalar_reward` of each intermediate result."""
    return [extract_scalar_reward(v, scalar_key) for v in trial_history]


def convert_dict2tuple(value):
    """Dicts (recursively) to sorted tuples of items, so that they can be hashed. Changes ``value``."""
    if isinstance(value, dict):
        for key in value:
            value[key] = convert_dict2tuple(value[key])
        return tuple(sorted(value.items()))
    return value


def merge_parameter(base_params, override_params):
    """Override the values of ``base_params`` (a dict or an argparse Namespace) with the tuner's, in place.

    Every overriding key must exist in ``base_params`` (ValueError otherwise). A value must have the
    base value's type, as NNI checks it: an int where the base is a float becomes a float; a bool is
    an int; anything goes where the base is None; any other mismatch is a ValueError.
    """
    if override_params is None:
        return base_params
    is_dict = isinstance(base_params, dict)
    for key, value in override_params.items():
        if is_dict:
            if key not in base_params:
                raise ValueError("Key '%s' not found in base parameters." % key)
            base_params[key] = _ensure_compatible_type(key, base_params[key], value)
        else:
            if not hasattr(base_params, key):
                raise ValueError("Key '%s' not found in base parameters." % key)
            setattr(base_params, key, _ensure_compatible_type(key, getattr(base_params, key), value))
    return base_params


def _ensure_compatible_type(key, base, override):
    if base is None or isinstance(override, type(base)):
        return override
    if isinstance(base, float) and isinstance(override, int):
        return float(override)
    raise ValueError(
        'Expected "%s" in override parameters to have type %s, but found %s'
        % (key, type(base).__name__, type(override).__name__)
    )


class ClassArgsValidator(object):
    """The classArgs validator interface of NNI tuners and assessors (nni-ts's checks are plain callables)."""

    def validate_class_args(self, **kwargs):
        pass

    def choices(self, key, *args):
        def check(value):
            if value not in args:
                raise ValueError("%s should be in [%s]!" % (key, str(args)))
            return True

        return check

    def range(self, key, keyType, start, end):
        def check(value):
            if not isinstance(value, keyType):
                raise ValueError("%s should be %s type!" % (key, keyType.__name__))
            if not start <= value <= end:
                raise ValueError("%s should be in range of (%s, %s)!" % (key, start, end))
            return True

        return check

    def path(self, key):
        def check(value):
            if not isinstance(value, str):
                raise ValueError("%s should be a string!" % key)
            if not Path(value).exists():
                raise ValueError("%s path does not exist!" % key)
            return True

        return check
