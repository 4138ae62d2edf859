"""The cluster server: trial keepers on remote hosts and pods report to it. See docs/cluster-server.md."""

from .app import API_PREFIX, ClusterServer, DownloadProvider, openapi_document
from .models import Exited, LogRequest, LogTail, Record, Report, ReportAck
from .sink import ServiceSink, TrialChannel, TrialSink

__all__ = [
    "API_PREFIX",
    "ClusterServer",
    "DownloadProvider",
    "Exited",
    "LogRequest",
    "LogTail",
    "Record",
    "Report",
    "ReportAck",
    "ServiceSink",
    "TrialChannel",
    "TrialSink",
    "openapi_document",
]
