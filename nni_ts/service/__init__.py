"""The experiment service (``nni-ts serve``): a multi-user REST API over the experiment loop.

See docs/service.md. :class:`ExperimentService` runs the API; :mod:`nni_ts.service.users` manages
users and tokens; :mod:`nni_ts.service.db` is the SQLite / PostgreSQL database.
"""

from .app import ExperimentService, ServiceSettings
from .configs import PlatformPolicy
from .db import Database, open_database
from .openapi import openapi_document

__all__ = ["Database", "ExperimentService", "PlatformPolicy", "ServiceSettings", "open_database", "openapi_document"]
