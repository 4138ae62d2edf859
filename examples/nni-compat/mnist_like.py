"""An unmodified NNI-style trial (the shape of NNI's mnist examples), with no dependency beyond the
standard library: it uses ``nni.get_next_parameter``, ``nni.report_intermediate_result``,
``nni.report_final_result``, ``nni.get_trial_id`` and ``nni.get_sequence_id`` exactly as NNI trial
code does. It runs as is under NNI and under nni-ts (with or without NNI installed)."""

import logging
import math
import random

import nni

LOG = logging.getLogger("mnist_like")


def train(params):
    rng = random.Random(nni.get_sequence_id())
    # A made-up learning curve: best around lr=0.01, momentum 0.9, hidden 512.
    quality = (
        -abs(math.log10(params["learning_rate"]) + 2) * 0.1
        - abs(params["momentum"] - 0.9) * 0.2
        - abs(math.log2(params["hidden_size"]) - 9) * 0.02
    )
    acc = 0.0
    for epoch in range(1, 6):
        acc = max(0.0, min(1.0, 0.9 + quality - 0.5 / epoch + rng.uniform(-0.005, 0.005)))
        nni.report_intermediate_result(acc)
        LOG.debug("epoch %d accuracy %f", epoch, acc)
    return acc


if __name__ == "__main__":
    params = {"learning_rate": 0.1, "momentum": 0.5, "hidden_size": 128, "batch_size": 32}
    tuned = nni.get_next_parameter()
    params.update(tuned)
    LOG.info("trial %s with %s", nni.get_trial_id(), params)
    nni.report_final_result({"default": train(params), "trial": nni.get_trial_id()})
