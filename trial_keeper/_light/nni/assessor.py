"""``nni.assessor``: the base class of NNI assessors, so that assessors written for NNI load without NNI."""

from enum import Enum

from .recoverable import Recoverable

__all__ = ["AssessResult", "Assessor"]


class AssessResult(Enum):
    """An assessor's verdict on a running trial."""

    Good = True
    Bad = False


class Assessor(Recoverable):
    """NNI's assessor interface: override ``assess_trial``; ``trial_end`` is optional."""

    def assess_trial(self, trial_job_id, trial_history):
        raise NotImplementedError("Assessor: assess_trial not implemented")

    def trial_end(self, trial_job_id, success):
        pass

    def load_checkpoint(self):
        pass

    def save_checkpoint(self):
        pass

    def _on_exit(self):
        pass

    def _on_error(self):
        pass
