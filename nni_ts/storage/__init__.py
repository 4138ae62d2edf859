"""Persistent state of experiments: trials, their metrics and the experiment's own record."""

from .store import ExperimentRecord, MetricRecord, Store, TrialRecord, open_store

__all__ = ["ExperimentRecord", "MetricRecord", "Store", "TrialRecord", "open_store"]
