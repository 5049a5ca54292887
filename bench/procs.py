"""Child processes of the harness, and what /proc says about them.

Every child starts in its own session (so its process group id is its pid)
and is stopped through that group: SIGTERM, then SIGKILL after
``STOP_SECONDS``. ``Processes`` is a context manager that stops everything it
started, in reverse order, however the block is left (an error, Ctrl-C, or a
SIGTERM, which ``sigterm_as_interrupt`` turns into KeyboardInterrupt).
"""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

STOP_SECONDS = 10.0
READY_SECONDS = 30.0
POLL_SECONDS = 0.05
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class StartError(RuntimeError):
    """A server did not come up; the message says which and shows the end of its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def raise_open_files_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (children inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def sigterm_as_interrupt() -> None:
    """Let SIGTERM unwind like Ctrl-C, so ``finally`` blocks stop the children."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


class Child:
    """One started process with its output in ``log``."""

    def __init__(self, name: str, argv: list[str], log: Path, cwd: Path, env: dict | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited {self.proc.returncode}"
        return f"<Child {self.name} pid={self.pid} {state}>"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for(self, ready, what: str, timeout: float = READY_SECONDS):
        """Poll ``ready()`` until it returns something true; StartError if the child exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = ready()
            if value:
                return value
            if not self.alive:
                raise StartError(f"{self.name} exited with status {self.proc.returncode} before {what}:\n"
                                 f"{self.tail()}")
            time.sleep(POLL_SECONDS)
        raise StartError(f"{self.name}: no {what} within {timeout:g}s:\n{self.tail()}")

    def wait_for_log(self, pattern: str, timeout: float = READY_SECONDS) -> re.Match:
        regex = re.compile(pattern)

        def found():
            try:
                return regex.search(self.log.read_text(errors="replace"))
            except OSError:
                return None

        return self.wait_for(found, f"/{pattern}/ in its log", timeout)

    def signal(self, sig: int) -> None:
        if self.alive:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = STOP_SECONDS) -> int:
        """SIGTERM to the group, then SIGKILL; returns the exit status."""
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.proc.wait(timeout)

    def group(self) -> list[int]:
        """Pids of the processes in this child's group (the child and what it forked)."""
        return group_members(self.pid)


class Processes:
    """Starts children and guarantees they are stopped when the ``with`` block ends."""

    def __init__(self, folder: Path, cwd: Path) -> None:
        self.folder = folder
        self.cwd = cwd
        self.children: list[Child] = []

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    def start(self, name: str, argv: list[str], env: dict | None = None, cwd: Path | None = None) -> Child:
        child = Child(name, argv, self.folder / f"{name}.log", cwd or self.cwd, env)
        self.children.append(child)
        return child

    def stop(self, child: Child) -> int:
        status = child.stop()
        if child in self.children:
            self.children.remove(child)
        return status

    def stop_all(self) -> None:
        while self.children:
            child = self.children.pop()
            try:
                child.stop()
            except KeyboardInterrupt:  # a second Ctrl-C: still kill the rest
                child.signal(signal.SIGKILL)


# --- /proc ------------------------------------------------------------------

def group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after "(comm)": state, ppid, pgrp, ...
            members.append(int(entry))
    return members


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU time of these processes so far."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])  # utime
        system += int(fields[12])  # stime
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss(pids: list[int]) -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs 5); False when not allowed."""
    ok = True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            ok = False
    return ok


def peak_rss_mb(pids: list[int]) -> float:
    """Sum of VmHWM (peak resident set) over the processes, in MB (10^6 bytes)."""
    return sum(_status_kb(pid, "VmHWM") for pid in pids) * 1024 / 1e6


@dataclass(frozen=True)
class Usage:
    user_seconds: float
    system_seconds: float  # in the kernel: syscalls, and on loopback the receiving side's TCP work too
    peak_rss_mb: float

    @property
    def cpu_seconds(self) -> float:
        return self.user_seconds + self.system_seconds


class UsageMeter:
    """CPU time and peak RSS of a process group over one measurement."""

    def __init__(self, child: Child) -> None:
        self.pids = child.group()
        reset_peak_rss(self.pids)
        self._cpu = cpu_seconds(self.pids)

    def read(self) -> Usage:
        user, system = cpu_seconds(self.pids)
        return Usage(user - self._cpu[0], system - self._cpu[1], peak_rss_mb(self.pids))
