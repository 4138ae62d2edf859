"""The experiment loop (tuner, training service, store) and its control socket."""

from .experiment import Experiment, ExperimentResult, ExperimentStatus, Progress

__all__ = ["Experiment", "ExperimentResult", "ExperimentStatus", "Progress"]
