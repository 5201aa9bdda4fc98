"""Where a cell runs: local (this host), docker, remote latency server, emulated.

``select`` is stdlib-only so the noxfile can check a target before installing anything.
"""
