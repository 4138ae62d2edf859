"""The built-in platforms. Each registers in the ``nni_ts.platforms`` entry-point group, as a third party's would.

Platforms never import each other; shared helpers live in private modules here (``gpu``, ``_inotify``).
"""
