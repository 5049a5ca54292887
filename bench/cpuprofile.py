"""``python -m bench.cpuprofile OUT [proxy args]``: the proxy's CLI under cProfile, timed in CPU time.

``python -m cProfile`` times with the wall clock, so on a shared machine a
function the scheduler pre-empts (a loopback ``send`` that wakes the reader,
typically) is charged for the time other processes ran. This clock counts
only the proxy's own CPU time, at the price of a slower clock read per call.
"""

import cProfile
import sys
import time

from proxy.cli import main

profile = cProfile.Profile(time.process_time)
try:
    profile.runcall(main, sys.argv[2:])
except SystemExit:
    pass
finally:
    profile.dump_stats(sys.argv[1])
