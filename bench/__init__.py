"""``make bench``: the proxy measured side by side with nginx, in back-to-back pairs.

Layout, in the spirit of the proxy's sans-IO split (decisions in plain code
that tests drive without sockets, I/O at the edge): the decisions are plain
functions over frozen dataclasses (``scenarios``,
``configs``, ``report``, ``wrk.parse``), and only ``procs``, ``wrk.run`` and
``cli`` start processes or wait on them. docs/performance.md explains the
method and holds the latest results.

``python -m bench.slow_clients`` is a measurement of its own: slow clients
against Gunicorn's sync workers, directly and through the proxy
(docs/slow-clients.md).
"""
