"""A light, standard-library-only stand-in for the ``nni`` trial SDK, shipped by nni-ts.

It is put on a trial's path by nni-ts. If the real ``nni`` package is importable from the trial's
interpreter, importing this module loads the real one in its place, so a trial always gets the real
SDK when it is installed and this one otherwise. Set ``NNI_TS_LIGHT_NNI=1`` to force this module.

It speaks the legacy trial protocol: parameters from ``$NNI_SYS_DIR/parameter.cfg``; metric records to
``$NNI_SYS_DIR/.nni/metrics`` when ``NNI_PLATFORM`` is ``local``, else as ``NNISDK_MEb'...'`` lines on
standard output. Without ``NNI_PLATFORM`` (a trial run by hand) it is NNI's standalone mode: parameters
are ``{}`` and results are printed.

Beside the trial API it has what custom tuners and assessors import (``nni.tuner``, ``nni.assessor``,
``nni.utils``, ``nni.recoverable``, ``nni.typehint``, ``nni.NoMoreTrialError``, ``nni.trace``), so that
the manager can load classes written for NNI without NNI installed. ``__version__`` is
``3.0+nnits.light``: NNI 3.0's API, nni-ts's light module.
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
    from . import assessor, recoverable, trial, tuner, typehint, utils  # noqa: F401
    from ._sdk import (  # noqa: F401
        get_current_parameter,
        get_experiment_id,
        get_next_parameter,
        get_next_parameters,
        get_sequence_id,
        get_trial_id,
        report_final_result,
        report_intermediate_result,
    )
    from .utils import ClassArgsValidator  # noqa: F401

    #: nni-ts's light stand-in for NNI 3.0's trial and tuner SDK (PEP 440: the API level, then ours).
    __version__ = "3.0+nnits.light"
    LIGHT = True

    class NoMoreTrialError(Exception):
        """Raised by a tuner's ``generate_parameters`` when it has nothing more to try."""

        def __init__(self, ErrorInfo="Search space fully explored"):  # noqa: N803 - NNI's name
            super().__init__(ErrorInfo)
            self.errorinfo = ErrorInfo

        def __str__(self):
            return self.errorinfo

    def trace(cls_or_func=None, *, kw_only=True, inheritable=False):
        """NNI's ``nni.trace`` records how an object was built, for NAS; here it changes nothing."""
        if cls_or_func is None:
            return lambda f: f
        return cls_or_func
