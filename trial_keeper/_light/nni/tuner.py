"""``nni.tuner``: the base class of NNI tuners, so that tuners written for NNI load without NNI."""

import logging

from .recoverable import Recoverable

__all__ = ["Tuner"]

_logger = logging.getLogger(__name__)


class Tuner(Recoverable):
    """NNI's tuner interface. Override ``update_search_space``, ``generate_parameters`` and
    ``receive_trial_result``; ``trial_end`` and ``import_data`` are optional."""

    def generate_parameters(self, parameter_id, **kwargs):
        raise NotImplementedError("Tuner: generate_parameters not implemented")

    def generate_multiple_parameters(self, parameter_id_list, **kwargs):
        from . import NoMoreTrialError

        result = []
        for parameter_id in parameter_id_list:
            try:
                result.append(self.generate_parameters(parameter_id, **kwargs))
            except NoMoreTrialError:
                return result
        return result

    def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
        raise NotImplementedError("Tuner: receive_trial_result not implemented")

    def _accept_customized_trials(self, accept=True):
        self._accept_customized = accept

    def trial_end(self, parameter_id, success, **kwargs):
        pass

    def update_search_space(self, search_space):
        raise NotImplementedError("Tuner: update_search_space not implemented")

    def load_checkpoint(self):
        _logger.info("Load checkpoint ignored by tuner, checkpoint path: %s", self.get_checkpoint_path())

    def save_checkpoint(self):
        _logger.info("Save checkpoint ignored by tuner, checkpoint path: %s", self.get_checkpoint_path())

    def import_data(self, data):
        pass

    def _on_exit(self):
        pass

    def _on_error(self):
        pass
