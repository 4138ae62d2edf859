"""The TrialKeeper: runs one trial beside it, journals its metrics and reports them to the manager.

Standard library only, Python 3.8 and newer: it is copied into trial images and onto SSH hosts.
It never imports ``nni_ts``.
"""

import os as _os

__version__ = "0.1.0"

#: The directory to put on a trial's PYTHONPATH so that ``import nni`` works without NNI installed.
LIGHT_NNI_PATH = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "_light")
