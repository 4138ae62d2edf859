"""Test support shipped with nni-ts: the conformance kit (``nni_ts.testing.conformance``), the
fake Kubernetes cluster (``nni_ts.testing.k8s``), the hygiene fixtures (``nni_ts.testing.hygiene``), a
clock that tests move by hand (:class:`FakeClock`) and an in-memory platform whose trials are scripted
(:class:`FakeTrainingService`).

Nothing here is imported by the library itself.
"""

from .clock import FakeClock, FakeTimer
from .fake import NO_FINAL, FakeTrainingService, FakeTrial, ScriptedTrial

__all__ = ["NO_FINAL", "FakeClock", "FakeTimer", "FakeTrainingService", "FakeTrial", "ScriptedTrial"]
