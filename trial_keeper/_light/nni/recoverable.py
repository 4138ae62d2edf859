"""``nni.recoverable``: the checkpoint hooks of tuners and assessors."""

import os


class Recoverable(object):
    def __init__(self):
        self.recovered_max_param_id = -1
        self.recovered_trial_params = {}

    def load_checkpoint(self):
        pass

    def save_checkpoint(self):
        pass

    def get_checkpoint_path(self):
        path = os.getenv("NNI_CHECKPOINT_DIRECTORY")
        if path is not None and os.path.isdir(path):
            return path
        return None

    def recover_parameter_id(self, data):
        import json

        if not isinstance(data, list):
            data = [data]
        previous = 0
        for trial in data:
            if isinstance(trial, str):
                trial = json.loads(trial)
            if not isinstance(trial.get("parameter_id"), int):
                continue
            self.recovered_trial_params[trial["parameter_id"]] = trial["parameters"]
            previous = max(previous, trial["parameter_id"])
        self.recovered_max_param_id = previous
        return previous

    def is_created_in_previous_exp(self, param_id):
        if param_id is None:
            return False
        return param_id <= self.recovered_max_param_id
