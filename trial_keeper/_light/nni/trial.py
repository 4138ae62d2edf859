"""``nni.trial``: the trial API (the same functions as ``nni``)."""

from ._sdk import (  # noqa: F401
    get_current_parameter,
    get_experiment_id,
    get_next_parameter,
    get_next_parameters,
    get_sequence_id,
    get_trial_id,
    overwrite_intermediate_seq,
    report_final_result,
    report_intermediate_result,
)

__all__ = [
    "get_next_parameter",
    "get_next_parameters",
    "get_current_parameter",
    "report_intermediate_result",
    "report_final_result",
    "get_experiment_id",
    "get_trial_id",
    "get_sequence_id",
]
