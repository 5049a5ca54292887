"""The error log's set-up, and reopening every log file after log rotation (SIGUSR1).

logrotate (and anything like it) renames a log file and then asks the
program to reopen it by name; until then the program keeps appending to the
renamed file through the descriptor it holds. nginx reopens on SIGUSR1, and
so does the proxy: the master reopens its error log and passes the signal to
every worker, which reopens its access log and its error log.
"""

from __future__ import annotations

import logging
import sys

from .accesslog import reopen_access_logs

FORMAT = logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%Y/%m/%d %H:%M:%S")


def setup_logging(target: str) -> None:
    """Send the "proxy" logger to standard error ("-") or to a file, appending."""
    handler: logging.Handler
    handler = logging.StreamHandler(sys.stderr) if target == "-" else logging.FileHandler(target)
    handler.setFormatter(FORMAT)
    root = logging.getLogger("proxy")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def reopen_log_files() -> list[str]:
    """Reopen this process's log files by name; returns what could not be reopened (it keeps the old file)."""
    problems = reopen_access_logs()
    for handler in logging.getLogger("proxy").handlers:
        if isinstance(handler, logging.FileHandler):
            try:
                stream = open(handler.baseFilename, handler.mode, encoding=handler.encoding, errors=handler.errors)
            except OSError as exc:
                problems.append(f"cannot reopen {handler.baseFilename}: {exc.strerror}")
                continue
            old = handler.setStream(stream)
            if old is not None:
                old.close()
    return problems
