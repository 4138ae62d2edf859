"""Test support shipped with nni-ts: the conformance kit (``nni_ts.testing.conformance``), the
fake Kubernetes cluster (``nni_ts.testing.k8s``) and the hygiene fixtures (``nni_ts.testing.hygiene``).

Nothing here is imported by the library itself.
"""
