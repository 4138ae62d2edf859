"""Persistent state of experiments: trials, their metrics and the experiment's own record."""

from .store import AsyncStore, ExperimentRecord, MetricRecord, Store, TrialRecord, open_store

__all__ = ["AsyncStore", "ExperimentRecord", "MetricRecord", "Store", "TrialRecord", "open_store"]
