"""``python -m bench.cpuprofile OUT [proxy args]``: the proxy under cProfile, timed in CPU time.

``python -m cProfile`` times with the wall clock, so on a shared machine a
function the scheduler pre-empts (a loopback ``send`` that wakes the reader,
typically) is charged for the time other processes ran. This clock counts
only the proxy's own CPU time, at the price of a slower clock read per call.

With a master process (``[server] workers``), what serves requests is the
forked worker, which leaves through ``os._exit``: each worker's run is
profiled on its own and written to ``OUT`` (the first worker; later ones to
``OUT.<pid>``). A proxy without a master is profiled as one process.
"""

import cProfile
import os
import sys
import time

from proxy.cli import main

out = sys.argv[1]

try:
    from proxy.server import master
except ImportError:
    master = None

if master is not None and hasattr(master, "_worker_main"):
    serve_worker = master._worker_main

    def profiled_worker(*args, **kwargs):
        profile = cProfile.Profile(time.process_time)
        try:
            return profile.runcall(serve_worker, *args, **kwargs)
        finally:
            path = out if not os.path.exists(out) else f"{out}.{os.getpid()}"
            profile.dump_stats(path)

    master._worker_main = profiled_worker
    sys.exit(main(sys.argv[2:]))

profile = cProfile.Profile(time.process_time)
try:
    profile.runcall(main, sys.argv[2:])
except SystemExit:
    pass
finally:
    profile.dump_stats(out)
