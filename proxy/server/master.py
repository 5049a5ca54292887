"""The master process: binds, forks workers, restarts the ones that die, reloads, stops.

nginx's process model, for the same reasons: the master holds the listening
sockets and never touches a request, so it can replace every worker without
closing a socket. Signals, as nginx and Gunicorn use them:

* SIGTERM, SIGINT: graceful stop. Workers stop accepting, finish in-flight
  requests within ``grace_period``, and exit; then the master exits 0.
* SIGQUIT: immediate stop.
* SIGHUP: reload. The file is read and validated first; if it is invalid
  the old workers keep serving and the error is logged. Otherwise new
  listening sockets are bound as needed, new workers start with the new
  configuration, and once they are ready the old ones are told to finish
  their in-flight requests and exit. Nothing that reached a socket is lost.
  The master reopens its error log first, so the new workers write to a
  file of that name (the new workers open the access log themselves).
* SIGUSR1: reopen the log files (after log rotation renamed them), as
  nginx does: the master reopens its error log and passes the signal to
  every worker, which reopens its access and error logs. Nothing else
  changes. (Without a handler, SIGUSR1 would end the process.)
* SIGCHLD: a worker (or the certificate manager) ended. If nobody asked it to, it is logged with its
  exit status and replaced (with a growing delay if it keeps dying).
  Either way the counters it last published are folded into the totals the
  master keeps on the status board (metrics.retire), so the status page and
  Prometheus counters carry on across reloads and restarts.

With ``acme = true`` sites the master also forks one certificate manager
(server/acme.py): it alone talks to the ACME CA. It is restarted when it
dies (after a growing delay), replaced with the configuration on a reload,
and stopped with the workers. ``notices`` (shared memory, made before any
fork) is how it tells the workers that a certificate changed.

``[server] pid_file``, when set, holds the master's pid from start to exit
(as nginx's): the process these signals go to.

The master's loop is synchronous (no asyncio in the master, so a fork never
copies a running event loop): signals arrive through ``set_wakeup_fd`` and
are handled one at a time from a table of ``handle_<signal>`` methods, as
Gunicorn's arbiter does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import signal
import time
from dataclasses import dataclass, field

from .. import config as config_module
from ..accesslog import cannot_open
from ..config import Config, Listen, acme_sites
from ..errors import ConfigError
from ..logfiles import reopen_log_files
from ..metrics import NOTHING_RETIRED, master_view, retire
from ..tls import Certificates, describe, load_certificates
from .board import Board
from .sockets import (ListenError, bind, chmod_listener, close_listener, describe_listener, keyed,
                      raise_fd_limit)
from .acme import Notices, manager_main
from .tls import log_tls_listening
from .zones import Zones

log = logging.getLogger("proxy")

READY_TIMEOUT = 30.0  # a new worker that is not accepting by then is abandoned
RESTART_DELAY_MAX = 5.0
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD)


@dataclass
class Worker:
    pid: int
    generation: int
    ready_fd: int  # the worker writes one byte here once it accepts connections
    started: float
    slot: int  # its place on the status board
    ready: bool = False
    stopping: bool = False


@dataclass
class Master:
    config: Config
    # Listening sockets by sockets.keyed key: the address, and which occurrence of it (port 0 may repeat).
    sockets: dict[tuple, object] = field(default_factory=dict)
    # Edge (TLS): [tls] listen sockets, apart from the plain ones (both lists may hold "127.0.0.1:0"), and the
    # contexts built once per generation here, so every worker of a generation serves the same certificates.
    tls_sockets: dict[tuple, object] = field(default_factory=dict)
    certificates: Certificates | None = None
    workers: dict[int, Worker] = field(default_factory=dict)
    generation: int = 0
    stopping: str = ""
    board: Board = field(default_factory=Board)
    zones: Zones = field(default_factory=Zones)  # rate and connection limits, shared with every worker
    exit_code: int = 0
    started: float = field(default_factory=time.time)  # the proxy's start: a reload keeps it
    retired: dict = field(default_factory=lambda: NOTHING_RETIRED)  # counters of workers that have left
    slot: int | None = None  # the master's own place on the status board
    _pid_file: str = ""  # the one written, removed at exit
    _signals: list[int] = field(default_factory=list)
    _restart_delay: float = 0.0
    _ready_generations: set[int] = field(default_factory=set)  # generations whose workers all came up once
    _previous: tuple | None = None  # (config, certificates, generation) while a reload is in progress
    # ACME: the certificate manager's pid (None when none runs), when it may start again, and the counters it
    # bumps; certificates_version is their value when ``certificates`` were read.
    notices: Notices = field(default_factory=Notices)
    certificates_version: int = 0
    manager_pid: int | None = None
    _manager_at: float = 0.0
    _manager_delay: float = 0.0
    _manager_started: float = 0.0
    _manager_replaced: bool = False

    def __repr__(self) -> str:
        return f"<Master generation={self.generation} workers={sorted(self.workers)} stopping={self.stopping!r}>"

    # --- start ---

    def run(self) -> int:
        raise_fd_limit()
        try:
            return self._run()
        finally:  # whatever way the master ends, its unix socket files go with it (as nginx's do)
            for sock in [*self.sockets.values(), *self.tls_sockets.values()]:
                close_listener(sock)

    def _run(self) -> int:
        for key, entry in keyed(self.config.server.listen):
            self.sockets[key] = bind(entry)  # ListenError goes to the CLI as one line
        for entry, sock in self.sockets_for(self.config):
            log.info("%s", describe_listener(entry, sock, "http"))
        if self.config.tls is not None:
            self.certificates_version = self.notices.certificates
            self.certificates = load_certificates(self.config.tls, self.config.path)  # ConfigError: to the CLI
            for key, entry in keyed(self.config.tls.listen):
                self.tls_sockets[key] = bind(entry)
            log_tls_listening(self.tls_sockets_for(self.config), self.certificates)
        self._write_pid_file(self.config)  # ConfigError: to the CLI
        self.zones.prepare(self.config)
        self.slot = self.board.take()
        self._publish()
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)
        for sig in HANDLED:
            signal.signal(sig, self._record)
        try:
            self.spawn_generation()
            return self._loop(wake_read)
        finally:
            signal.set_wakeup_fd(-1)
            os.close(wake_read)
            os.close(wake_write)
            self._remove_pid_file()

    # --- the pid file ---

    def _write_pid_file(self, cfg: Config) -> None:
        """Write (or move, when a reload names another) the pid file; raises ConfigError with one line."""
        path = cfg.server.pid_file
        if path == self._pid_file:
            return
        if path:
            temporary = f"{path}.{os.getpid()}.tmp"
            try:
                with open(temporary, "w") as fh:
                    fh.write(f"{os.getpid()}\n")
                os.replace(temporary, path)  # whoever reads it never sees it half-written
            except OSError as exc:
                raise ConfigError(f"{cfg.path}: server.pid_file: cannot write {path}: {exc.strerror}") from None
        self._remove_pid_file()
        self._pid_file = path

    def _remove_pid_file(self) -> None:
        """Remove the pid file, unless another process has written its own pid there since."""
        if not self._pid_file:
            return
        try:
            with open(self._pid_file) as fh:
                if fh.read().strip() == str(os.getpid()):
                    os.unlink(self._pid_file)
        except OSError:
            pass
        self._pid_file = ""

    # --- the status board: the master's share ---

    def _publish(self) -> None:
        """Pin the master's view (pid, start, retired counters); repeated every turn of the loop so
        readers, who skip views older than a few seconds, keep seeing it."""
        payload = json.dumps(master_view(os.getpid(), self.started, self.retired), separators=(",", ":"))
        if self.slot is not None and not self.board.publish(self.slot, payload.encode()):
            log.warning("status board: the master's view (%d bytes) does not fit its slot", len(payload))

    def _retire(self, worker: Worker) -> None:
        """Fold what a worker that has ended counted into the master's totals, and free its slot."""
        payload = self.board.read_last(worker.slot)
        self.board.release(worker.slot)
        if payload is not None:
            self.retired = retire(self.retired, json.loads(payload))
            self._publish()

    def _record(self, signum, frame) -> None:
        self._signals.append(signum)

    def _loop(self, wake_read: int) -> int:
        while True:
            readable = [wake_read] + [w.ready_fd for w in self.workers.values() if not w.ready]
            try:
                ready, _, _ = select.select(readable, [], [], 1.0)
            except InterruptedError:
                ready = []
            if wake_read in ready:
                os.read(wake_read, 512)
            for worker in list(self.workers.values()):
                # ready_fd is closed once read, and its number may already belong to a newer pipe
                if not worker.ready and worker.ready_fd in ready:
                    self._worker_ready(worker)
            while self._signals:
                signum = self._signals.pop(0)
                getattr(self, "handle_" + signal.Signals(signum).name.lower())()
            self._reap()
            self._publish()
            self._check_ready_timeouts()
            if not self.stopping:
                self._keep_manager()
            if self.stopping and not self.workers and self.manager_pid is None:
                log.info("master stopped")
                return self.exit_code
            if not self.stopping:
                self._replace_missing()

    # --- workers ---

    def spawn_generation(self) -> None:
        self.generation += 1
        for _ in range(self.config.server.workers):
            self.spawn()

    def spawn(self) -> None:
        ready_read, ready_write = os.pipe()
        slot = self.board.take()
        # Signals stay blocked across fork() until the child has replaced the master's handlers:
        # a SIGTERM that reached it in between would run the inherited handler and be lost.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        pid = os.fork()
        if pid == 0:  # the child never returns from here
            os.close(ready_read)
            code = 1
            try:
                code = _worker_main(self.config, self.sockets_for(self.config), ready_write,
                                    self.board, slot, self.tls_sockets_for(self.config), self.certificates,
                                    self.zones, self.notices, self.certificates_version)
            except BaseException:  # noqa: B036 - a worker must never fall back into the master's loop
                log.exception("worker %d failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(ready_write)
        self.workers[pid] = Worker(pid, self.generation, ready_read, time.monotonic(), slot)

    # --- the certificate manager (ACME) ---

    def _keep_manager(self) -> None:
        """Start the certificate manager when the configuration wants one and none runs (after the delay a
        manager that died earns)."""
        if self.manager_pid is not None or not acme_sites(self.config) or time.monotonic() < self._manager_at:
            return
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        pid = os.fork()
        if pid == 0:  # the child never returns from here
            code = 1
            try:
                for sock in [*self.sockets.values(), *self.tls_sockets.values()]:
                    sock.close()  # the master's to close: a port must be free once the master closed it
                code = manager_main(self.config, self.notices)
            except BaseException:  # noqa: B036 - never fall back into the master's loop
                log.exception("certificate manager %d failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.manager_pid = pid
        self._manager_started = time.monotonic()

    def _manager_ended(self, status: int) -> None:
        self.manager_pid = None
        if self.stopping or self._manager_replaced:
            self._manager_replaced = False
            log.info("certificate manager exited")
            return
        lived = time.monotonic() - self._manager_started
        self._manager_delay = 1.0 if lived > 60 else min(max(self._manager_delay * 2, 1.0), 60.0)
        self._manager_at = time.monotonic() + self._manager_delay
        log.error("certificate manager died (%s) after %.1fs; starting a new one in %gs", _describe(status), lived,
                  self._manager_delay)

    def _replace_manager(self) -> None:
        """A reload: the manager goes, and one with the new configuration comes (once this one has left)."""
        if self.manager_pid is not None:
            self._manager_replaced = True
            self._kill(self.manager_pid, signal.SIGTERM)

    @staticmethod
    def _kill(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def sockets_for(self, cfg: Config) -> list[tuple[Listen, object]]:
        """``cfg``'s plain listen entries, each with its socket (options such as proxy_protocol come from
        the entry, so a reload may change them without a new socket)."""
        return [(entry, self.sockets[key]) for key, entry in keyed(cfg.server.listen)]

    def tls_sockets_for(self, cfg: Config) -> list[tuple[Listen, object]]:
        return [(entry, self.tls_sockets[key]) for key, entry in keyed(cfg.tls.listen if cfg.tls else ())]

    def _worker_ready(self, worker: Worker) -> None:
        try:
            os.read(worker.ready_fd, 1)
        except OSError:
            pass
        os.close(worker.ready_fd)
        worker.ready = True
        log.info("worker %d (generation %d) is accepting connections", worker.pid, worker.generation)
        if worker.generation == self.generation and all(
                w.ready for w in self.workers.values() if w.generation == self.generation):
            self._ready_generations.add(self.generation)
            self._previous = None
            self._retire_old_generations()

    def _retire_old_generations(self) -> None:
        old = [w for w in self.workers.values() if w.generation < self.generation and not w.stopping]
        for worker in old:
            self._stop_worker(worker, signal.SIGTERM)
        if old:
            log.info("reload complete: %d old worker(s) finishing their requests", len(old))
        self.zones.keep_only(self.config)
        in_use = {id(s) for _, s in self.sockets_for(self.config)}
        for key in [k for k, s in self.sockets.items() if id(s) not in in_use]:
            close_listener(self.sockets.pop(key))
            log.info("no longer listening on %s", key[0])
        in_use = {id(s) for _, s in self.tls_sockets_for(self.config)}
        for key in [k for k, s in self.tls_sockets.items() if id(s) not in in_use]:
            close_listener(self.tls_sockets.pop(key))
            log.info("no longer listening on %s (TLS)", key[0])

    def _stop_worker(self, worker: Worker, sig: int) -> None:
        worker.stopping = True
        try:
            os.kill(worker.pid, sig)
        except ProcessLookupError:
            pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.manager_pid:
                self._manager_ended(status)
                continue
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            self._retire(worker)
            if not worker.ready:
                os.close(worker.ready_fd)
            if worker.stopping or self.stopping:
                log.info("worker %d exited", pid)
                continue
            if worker.generation not in self._ready_generations:
                self._failed_to_start(worker, status)
                continue
            self.zones.forget_connections()  # the requests it counted for conn_limit can no longer end
            lived = time.monotonic() - worker.started
            self._restart_delay = 0.0 if lived > 10 else min(max(self._restart_delay * 2, 0.1), RESTART_DELAY_MAX)
            log.error("worker %d died (%s) after %.1fs; starting a new one", pid, _describe(status), lived)

    def _failed_to_start(self, worker: Worker, status: int) -> None:
        """A worker died before its generation ever served: restarting it would only loop.

        At start-up that ends the proxy with exit status 1 (Gunicorn does the
        same); during a reload the new generation is abandoned and the previous
        one keeps serving.
        """
        why = _describe(status)
        if self._previous is None:
            log.error("worker %d failed to start (%s): stopping; the reason is logged above", worker.pid, why)
            self.exit_code = 1
            self._stop("a worker failed to start", signal.SIGTERM)
            return
        log.error("reload failed, still serving the previous configuration: new worker %d died before "
                  "accepting (%s)", worker.pid, why)
        for other in self.workers.values():
            if other.generation == worker.generation:
                self._stop_worker(other, signal.SIGTERM)
        self.config, self.certificates, self.generation = self._previous
        self._previous = None
        self._replace_manager()  # it runs the configuration that failed

    def _replace_missing(self) -> None:
        current = [w for w in self.workers.values() if w.generation == self.generation]
        missing = self.config.server.workers - len(current)
        if missing > 0:
            if self._restart_delay:
                time.sleep(self._restart_delay)
            for _ in range(missing):
                self.spawn()

    def _check_ready_timeouts(self) -> None:
        now = time.monotonic()
        for worker in list(self.workers.values()):
            if not worker.ready and not worker.stopping and now - worker.started > READY_TIMEOUT:
                log.error("worker %d did not start accepting within %gs; stopping it", worker.pid, READY_TIMEOUT)
                self._stop_worker(worker, signal.SIGKILL)

    # --- signals (looked up by name, like Gunicorn's arbiter) ---

    def handle_sigterm(self) -> None:
        self._stop("received SIGTERM", signal.SIGTERM)

    def handle_sigint(self) -> None:
        self._stop("received SIGINT", signal.SIGTERM)

    def handle_sigquit(self) -> None:
        self._stop("received SIGQUIT", signal.SIGQUIT)

    def handle_sigchld(self) -> None:
        pass  # _reap runs after every signal

    def handle_sigusr1(self) -> None:
        _reopen_logs("master")
        for worker in self.workers.values():
            try:
                os.kill(worker.pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass

    def _stop(self, name: str, sig: int) -> None:
        if self.stopping and sig != signal.SIGQUIT:
            return
        self.stopping = name
        log.info("%s: stopping %d worker(s)%s", name, len(self.workers),
                 "" if sig == signal.SIGQUIT else " gracefully")
        for worker in self.workers.values():
            self._stop_worker(worker, sig)
        if self.manager_pid is not None:
            self._kill(self.manager_pid, sig)
        for sock in [*self.sockets.values(), *self.tls_sockets.values()]:
            close_listener(sock)

    def handle_sighup(self) -> None:
        if self.stopping:
            return
        path = self.config.path
        try:
            new = config_module.load(path)
            version = self.notices.certificates
            certificates = load_certificates(new.tls, new.path) if new.tls is not None else None  # re-read
        except ConfigError as exc:
            log.error("reload failed, still serving the previous configuration: %s", exc)
            return
        problem = cannot_open(new.log.access)
        if problem:
            log.error("reload failed, still serving the previous configuration: %s: log.access: %s", path, problem)
            return
        try:
            self._write_pid_file(new)
        except ConfigError as exc:
            log.error("reload failed, still serving the previous configuration: %s", exc)
            return
        added, added_tls = {}, {}
        try:
            for key, entry in keyed(new.server.listen):
                if key not in self.sockets:
                    added[key] = bind(entry)
            for key, entry in keyed(new.tls.listen if new.tls is not None else ()):
                if key not in self.tls_sockets:
                    added_tls[key] = bind(entry)
        except ListenError as exc:
            for sock in [*added.values(), *added_tls.values()]:
                close_listener(sock)
            log.error("reload failed, still serving the previous configuration: %s", exc.strerror)
            return
        self.sockets.update(added)
        self.tls_sockets.update(added_tls)
        fresh = {id(sock) for sock in [*added.values(), *added_tls.values()]}
        for entry, sock in self.sockets_for(new):
            if id(sock) in fresh:
                log.info("%s", describe_listener(entry, sock, "http"))
            else:
                chmod_listener(entry, sock)  # a kept unix socket takes the mode the new file gives it
        for entry, sock in self.tls_sockets_for(new):
            if id(sock) not in fresh:
                chmod_listener(entry, sock)
        log_tls_listening([(e, s) for e, s in self.tls_sockets_for(new) if id(s) in fresh], None)
        if certificates is not None:
            log.info("TLS certificates for the new workers: %s", describe(certificates))
        self._previous = (self.config, self.certificates, self.generation)
        self.certificates = certificates
        self.certificates_version = version
        self.config = new
        self._replace_manager()
        self.zones.prepare(new)  # zones kept by name and size: a reload does not reset the limits
        _reopen_logs("master", "SIGHUP")  # the new workers inherit the master's error log: a fresh one
        log.info("reloading %s: starting %d new worker(s)", path, new.server.workers)
        self.spawn_generation()


def _reopen_logs(who: str, why: str = "SIGUSR1") -> None:
    """Reopen this process's log files, and say so in the (new) error log."""
    problems = reopen_log_files()
    for problem in problems:
        log.error("%s %d: %s: %s; still writing to the old file", who, os.getpid(), why, problem)
    if not problems:
        log.info("%s %d: log files reopened (%s)", who, os.getpid(), why)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _loop_factory(choice: str):
    """uvloop's loop (a dependency) for "uvloop" and "auto"; asyncio's when asked for, or when "auto"
    cannot import uvloop ("uvloop" then fails at config load instead)."""
    if choice in ("uvloop", "auto"):
        try:
            import uvloop
        except ImportError:
            return None
        return uvloop.new_event_loop
    return None


def _worker_main(cfg: Config, sockets: list, ready_fd: int, board: Board, slot: int, tls_sockets: list,
                 certificates: Certificates | None, zones: Zones, notices: Notices, certificates_version: int) -> int:
    """A worker: one asyncio loop serving the inherited sockets until told to stop."""
    from .listener import serve

    for sig in HANDLED:
        signal.signal(sig, signal.SIG_DFL)
    # Ctrl-C and a SIGHUP sent to the process group reach the workers too; the master decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until the loop reopens the logs on it, below
    signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)  # blocked by the master around fork()
    master = os.getppid()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()  # its result: None to drain, 0.0 to stop at once

        def request_stop(grace: float | None) -> None:
            if not stop.done():
                stop.set_result(grace)

        loop.add_signal_handler(signal.SIGTERM, request_stop, None)
        loop.add_signal_handler(signal.SIGQUIT, request_stop, 0.0)
        loop.add_signal_handler(signal.SIGUSR1, _reopen_logs, "worker")

        def orphaned() -> None:
            if os.getppid() != master:
                log.warning("worker %d: the master process is gone; stopping", os.getpid())
                request_stop(None)
            else:
                loop.call_later(1.0, orphaned)
        loop.call_later(1.0, orphaned)

        def ready(addresses) -> None:
            os.write(ready_fd, b"1")
            os.close(ready_fd)

        await serve(cfg, shutdown=stop, sockets=sockets, on_ready=ready, board=board, slot=slot,
                    tls_sockets=tls_sockets, certificates=certificates, zones=zones, notices=notices,
                    certificates_version=certificates_version)

    new_loop = _loop_factory(cfg.server.event_loop)
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main())
    return 0
