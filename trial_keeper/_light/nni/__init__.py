"""A light, standard-library-only stand-in for the ``nni`` trial SDK, shipped by nni-ts.

It is put on a trial's path by nni-ts. If the real ``nni`` package is importable from the trial's
interpreter, importing this module loads the real one in its place, so a trial always gets the real
SDK when it is installed and this one otherwise. Set ``NNI_TS_LIGHT_NNI=1`` to force this module.

It speaks the legacy trial protocol: parameters from ``$NNI_SYS_DIR/parameter.cfg``; metric records to
``$NNI_SYS_DIR/.nni/metrics`` when ``NNI_PLATFORM`` is ``local``, else as ``NNISDK_MEb'...'`` lines on
standard output.
"""

import os as _os
import sys as _sys


def _load_real_nni():
    # Look for another ``nni`` on sys.path, skipping the directory this stand-in lives in.
    if _os.environ.get("NNI_TS_LIGHT_NNI") == "1":
        return None
    import importlib.machinery

    here = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    path = [p for p in _sys.path if _os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("nni", path)
    if spec is None or spec.loader is None:
        return None
    import importlib.util

    module = importlib.util.module_from_spec(spec)
    _sys.modules["nni"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        _sys.modules["nni"] = _sys.modules.get(__name__, module)
        raise
    return module


_real = _load_real_nni()
if _real is None:
    from ._sdk import (  # noqa: F401
        get_current_parameter,
        get_experiment_id,
        get_next_parameter,
        get_sequence_id,
        get_trial_id,
        report_final_result,
        report_intermediate_result,
    )
    from . import utils  # noqa: F401

    __version__ = "nni-ts-light"
    LIGHT = True
