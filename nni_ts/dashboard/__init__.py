"""The web dashboard: see and steer experiments in a browser (docs/dashboard.md).

Plain HTML, CSS and JavaScript modules served by aiohttp from this package's ``static`` directory,
with uPlot vendored (no build step, no CDN). :class:`Dashboard` serves the experiments of one store;
a :class:`Backend` decides who may see what and carries out actions.
"""

from .backends import LocalBackend, ServiceBackend, start_dashboard
from .server import Backend, Dashboard, Viewer

__all__ = ["Backend", "Dashboard", "LocalBackend", "ServiceBackend", "Viewer", "start_dashboard"]
