"""The master process: binds, forks, supervises. Gunicorn's ``Arbiter``, kept boring.

The master is single-threaded and never runs an event loop, a thread pool or Rust
threads, so ``fork()`` is always safe here; every runtime lives in the workers and is
created after fork. Signal handlers only queue the signal and write to a wake-up pipe;
the main loop handles one signal at a time, then reaps and tops up the workers.
"""

from __future__ import annotations

import errno
import gc
import os
import random
import select
import signal
import sys
import time
from types import FrameType
from typing import Any, ClassVar

from ferrocorn import _ferrocorn, control, daemon, proctitle, stats, systemd, upgrade, watch
from ferrocorn._version import __version__
from ferrocorn.app import import_app
from ferrocorn.config import ConfigError, load_config
from ferrocorn.glogging import Logger
from ferrocorn.pidfile import Pidfile, PidfileError
from ferrocorn.sock import BindError, Listener, create_listeners
from ferrocorn.worker import APP_LOAD_ERROR, SIG_ANSWER_HUNG, WORKER_BOOT_ERROR, Worker, boot
from ferrocorn.worker import SIG_DUMP_STACKS as WORKER_SIG_DUMP_STACKS

# Canonical names only: iterating the enum skips aliases such as SIGCLD for SIGCHLD.
SIGNAMES = {sig.value: sig.name[3:].lower() for sig in signal.Signals}


# Slots in the shared scoreboard: enough for any TTIN growth an operator plausibly does.
SCOREBOARD_MIN_SLOTS = 256

# A real-time signal the master sends a hung worker just before SIGABRT: faulthandler,
# registered for it in every worker, writes the Python stack of every thread from the
# C signal handler, so the stacks reach the log even when the worker is stuck in C
# code with the GIL released and no Python handler can run.
SIG_DUMP_STACKS = WORKER_SIG_DUMP_STACKS


def rss_mib(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB, from /proc (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


# Seconds between SIGABRT and SIGKILL for a timed-out worker: time for its Python
# handler (or, when stuck in C, its watchdog thread) to answer the client. The loop can
# wake early on other signals, so "next pass" alone could be milliseconds.
ABORT_GRACE = 1.0


class HaltServer(Exception):
    """Stop the master with ``reason`` and exit ``exit_status``."""

    def __init__(self, reason: str, exit_status: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_status = exit_status


class Arbiter:
    """Keeps ``num_workers`` workers alive and answers the operator's signals."""

    # TERM graceful; INT and QUIT quick; HUP reload; TTIN/TTOU one more/less worker;
    # USR1 reopen logs; USR2 re-exec a new master; WINCH stop workers when daemonized.
    SIGNALS: ClassVar[list[int]] = [
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGINT,
        signal.SIGTERM,
        signal.SIGTTIN,
        signal.SIGTTOU,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGWINCH,
        signal.SIGCHLD,
    ]

    def __init__(self, cfg: Any, app_uri: str, log: Logger, argv: list[str] | None = None) -> None:
        # The old master's pid when USR2 started this one (see upgrade.py).
        self.master_pid = upgrade.inherited_master_pid()
        if cfg.daemon and not self.master_pid:
            daemon.daemonize(bool(cfg.enable_stdio_inheritance))
        self.env_orig = dict(os.environ)  # passed to a USR2 child; restored on HUP
        daemon.apply_env(cfg.env)  # -e: in the master too, before --preload imports
        self.start_cwd = cfg.cwd
        self.systemd = False  # listeners came from systemd socket activation
        self.reexec_pid = 0  # the new master forked by USR2, while it lives
        # sd_notify READY=1 is due once num_workers workers younger than this age have
        # booted; None once sent (see check_ready).
        self.ready_after_age: int | None = 0
        self.cfg = cfg
        self.argv = argv  # the original command line, re-read on HUP
        self.app_uri = app_uri
        self.log = log
        self.pid = os.getpid()
        self.num_workers: int = cfg.workers
        self.workers: dict[int, Worker] = {}
        self.listeners: list[Listener] = []
        self.worker_age = 0
        self.sig_queue: list[int] = []
        self.preloaded_app: Any = None
        self.pidfile: Pidfile | None = None
        self.proc_name = cfg.proc_name
        # Mapped before the first fork so every worker shares it; sized for TTIN
        # growth well past the configured count.
        self.board = _ferrocorn.Scoreboard(max(SCOREBOARD_MIN_SLOTS, 4 * self.num_workers))
        self.free_slots = list(range(self.board.capacity - 1, -1, -1))
        self.stats: stats.StatsProcess | None = None  # --stats-bind, --statsd-host (stats.py)
        self.control = control.ControlServer(self)  # the control socket (control.py)
        self.reloads = 0
        self.watch = watch.Watch(self)  # warnings when the numbers call for action

    # Hook-facing aliases (gunicorn hooks read these).
    @property
    def LISTENERS(self) -> list[Listener]:
        return self.listeners

    def preload(self) -> None:
        """``--preload``: import the app here, before fork, so workers share its pages
        copy-on-write. ``gc.freeze()`` moves those objects out of the collector's
        generations: a collection in a worker would otherwise touch (and so copy) every
        page holding them."""
        self.preloaded_app = import_app(self.app_uri)
        gc.collect()
        gc.freeze()

    def start(self) -> None:
        # gunicorn's Arbiter.setup assigns num_workers, which reports the change once
        # (from None) before on_starting; hooks that track the pool rely on it.
        self.cfg.nworkers_changed(self, self.num_workers, None)
        self.log.info("Starting ferrocorn %s", __version__)
        if self.master_pid:
            self.proc_name += ".2"
        if self.cfg.pidfile:
            self.pidfile = Pidfile(self.cfg.pidfile + (".2" if self.master_pid else ""))
            try:
                self.pidfile.create(self.pid)
            except PidfileError as e:
                raise HaltServer(str(e), 1) from e
        self.cfg.on_starting(self)
        self.log.debug("Current configuration:\n%s", self.cfg.print_config_text())
        self.init_signals()
        daemon.chown_log_files(self.cfg, self.log)
        self.listeners = create_listeners(self.cfg, self.log, self.inherited_fds())
        urls = ",".join(lst.url() for lst in self.listeners)
        self.log.info("Listening at: %s (%s)", urls, self.pid)
        self.control.open(self.cfg)
        if self.cfg.stats_bind or self.cfg.statsd_host:
            self.stats = stats.StatsProcess(self, self.cfg.stats_bind)
        if self.cfg.statsd_host:
            from ferrocorn.statsd import STARTUP_NOTE

            self.log.info("%s; sending to %s", STARTUP_NOTE, self.cfg.statsd_host)
        self.log.info("Using worker: %s", self.cfg.worker_class_str)
        for note in getattr(self.cfg, "notes", []):
            self.log.info("%s", note)
        self.log.debug("Arbiter booted")
        self.cfg.when_ready(self)

    def inherited_fds(self) -> list[int] | None:
        """Listening descriptors handed to us: systemd socket activation first, then
        ``GUNICORN_FD`` from the master that started us with USR2."""
        count = systemd.listen_fds()
        if count:
            self.systemd = True
            return systemd.listen_fd_numbers(count)
        if self.master_pid:
            return upgrade.take_gunicorn_fds() or None
        return None

    def init_signals(self) -> None:
        self._pipe_r, self._pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for sig in self.SIGNALS:
            signal.signal(sig, self._queue_signal)
        signal.set_wakeup_fd(self._pipe_w, warn_on_full_buffer=False)

    def _queue_signal(self, signum: int, frame: FrameType | None) -> None:
        # No logging here: handlers may interrupt the logging module mid-write.
        self.sig_queue.append(signum)

    def run(self) -> int:
        """Serve until told to stop; returns the exit code."""
        try:
            self.start()
            proctitle.set_title(f"master [{self.proc_name}]")
            self.manage_workers()
            while True:
                self.maybe_promote_master()
                sig = self.sig_queue.pop(0) if self.sig_queue else None
                if sig is None:
                    self.sleep()
                    self.reap_workers()
                    self.murder_workers()
                    self.recycle_fat_workers()
                    self.manage_workers()
                    self.check_ready()
                    self.watch.tick()
                    self.control.tick()
                    continue
                name = SIGNAMES.get(sig, str(sig))
                handler = getattr(self, f"handle_{name}", None)
                if handler is None:
                    self.log.error("Unhandled signal: %s", name)
                    continue
                if name != "chld":
                    self.log.info("Handling signal: %s", name)
                handler()
                self.reap_workers()
                self.manage_workers()
        except StopIteration:
            self.halt()
        except KeyboardInterrupt:
            self.stop(graceful=False)
            self.halt()
        except HaltServer as h:
            self.halt(h.reason, h.exit_status)
        return 0  # unreachable: halt() exits

    def sleep(self) -> None:
        """Wait up to a second for a signal (the wake-up pipe turns readable)."""
        # Look at booting workers often until READY=1 is sent, then once a second.
        timeout = 1.0 if self.ready_after_age is None else 0.1
        # The control socket and its clients wait in the same select (control.py).
        readers, writers = self.control.select_sets()
        try:
            ready = select.select(
                [self._pipe_r, *readers], writers, [], self.control.timeout(timeout)
            )
            self.control.handle(ready[0], ready[1])
            if self._pipe_r in ready[0]:
                while os.read(self._pipe_r, 64):
                    pass
        except BlockingIOError:
            pass
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EINTR):
                raise

    # ---- signals -------------------------------------------------------------
    def handle_chld(self) -> None:
        self.reap_workers()

    def handle_term(self) -> None:
        raise StopIteration

    def handle_int(self) -> None:
        self.stop(graceful=False)
        raise StopIteration

    def handle_quit(self) -> None:
        self.stop(graceful=False)
        raise StopIteration

    def handle_hup(self) -> None:
        """Reload: re-read the configuration (file, environment arguments and the
        original command line), reopen logs, rebind if the addresses changed, then
        start a fresh set of workers (re-importing the app unless it was preloaded)
        and retire the old ones with TERM once the new ones are forked."""
        self.log.info("Hang up: Master")
        self.reloads += 1
        systemd.sd_notify(systemd.reloading_message(), self.log)
        self.reload_config()
        self.control.reconfigure(self.cfg)
        if self.stats is not None:
            self.stats.stop()  # respawned with the new configuration
            if not (self.cfg.stats_bind or self.cfg.statsd_host):
                self.stats.close()
                self.stats = None
        elif self.cfg.statsd_host:
            self.stats = stats.StatsProcess(self, self.cfg.stats_bind)
        self.cfg.on_reload(self)
        old = list(self.workers)
        self.ready_after_age = self.worker_age
        for _ in range(self.num_workers):
            self.spawn_worker()
        for pid in old:
            self.kill_worker(pid, signal.SIGTERM)

    def reload_config(self) -> None:
        if self.argv is None:
            return
        try:
            cfg, app_uri = load_config(self.argv, os.environ)
        except ConfigError as e:
            self.log.error("Reload failed, keeping the running configuration: %s", e)
            return
        except SystemExit:
            self.log.error("Reload failed: the command line no longer parses")
            return
        old_binds = list(self.cfg.bind)
        daemon.restore_env(self.cfg.env, self.env_orig)
        daemon.apply_env(cfg.env)
        self.cfg = cfg
        self.app_uri = app_uri
        self.log.setup(cfg)
        self.proc_name = cfg.proc_name + (".2" if self.master_pid else "")
        proctitle.set_title(f"master [{self.proc_name}]")
        if self.num_workers != cfg.workers:
            self.set_num_workers(cfg.workers)
        if list(cfg.bind) != old_binds:
            try:
                new_listeners = create_listeners(cfg, self.log)
            except BindError as e:
                self.log.error("Reload could not bind the new addresses: %s", e)
                return
            for lst in self.listeners:
                lst.close()
            self.listeners = new_listeners
            urls = ",".join(lst.url() for lst in self.listeners)
            self.log.info("Listening at: %s (%s)", urls, self.pid)

    def handle_ttin(self) -> None:
        self.set_num_workers(self.num_workers + 1)

    def handle_ttou(self) -> None:
        if self.num_workers > 1:
            self.set_num_workers(self.num_workers - 1)

    def handle_usr1(self) -> None:
        self.log.reopen_files()
        self.kill_workers(signal.SIGUSR1)

    def handle_usr2(self) -> None:
        """Fork and exec a new master that inherits the listeners (upgrade.py)."""
        if self.reexec_pid:
            self.log.warning("USR2 signal ignored. Child exists.")
            return
        if self.master_pid:
            self.log.warning("USR2 signal ignored. Parent exists.")
            return
        if self.argv is None:
            self.log.error("USR2 signal ignored: the original command line is unknown")
            return
        master_pid = os.getpid()
        fds = [lst.fileno() for lst in self.listeners]
        self.log.flush()
        pid = os.fork()
        if pid:
            self.reexec_pid = pid
            return
        try:  # the child: never return into the master's loop
            signal.set_wakeup_fd(-1)
            self.cfg.pre_exec(self)
            self.log.flush()
            upgrade.exec_new_master(
                self.argv, self.start_cwd, self.env_orig, master_pid, fds, self.systemd
            )
        except BaseException:
            self.log.exception("USR2: could not start a new master")
            self.log.flush()
        finally:
            os._exit(1)

    def handle_winch(self) -> None:
        if self.cfg.daemon:
            self.log.info("graceful stop of workers")
            self.num_workers = 0
            self.kill_workers(signal.SIGTERM)
        else:
            self.log.debug("SIGWINCH ignored. Not daemonized")

    def maybe_promote_master(self) -> None:
        """A master started by USR2 takes over once the old one is gone (its parent
        changed): the pidfile loses its ``.2``, and so does the process title."""
        if not self.master_pid or self.master_pid == os.getppid():
            return
        self.log.info("Master has been promoted.")
        self.master_pid = 0
        self.proc_name = self.cfg.proc_name
        os.environ.pop("GUNICORN_PID", None)
        if self.pidfile is not None and self.cfg.pidfile:
            try:
                self.pidfile.rename(self.cfg.pidfile)
            except PidfileError as e:
                self.log.error("%s", e)
        proctitle.set_title(f"master [{self.proc_name}]")
        self.control.promote()
        systemd.sd_notify(f"MAINPID={self.pid}", self.log)

    def check_ready(self) -> None:
        """sd_notify READY=1 once ``num_workers`` workers of the current generation
        have booted (imported the app and entered their loop), not before any has, as
        gunicorn does. HUP starts a new generation (after RELOADING=1)."""
        if self.ready_after_age is None:
            return
        booted = sum(
            1
            for worker in self.workers.values()
            if worker.age > self.ready_after_age
            and self.board.snapshot(worker.slot)["state"] not in ("booting", "free")
        )
        if booted < self.num_workers:
            return
        self.ready_after_age = None
        state = f"READY=1\nSTATUS=ferrocorn: {booted} workers booted"
        if self.master_pid:
            state = f"MAINPID={self.pid}\n{state}"
        if systemd.sd_notify(state, self.log):
            self.log.debug("sd_notify: READY=1 (%s workers booted)", booted)

    def set_num_workers(self, n: int) -> None:
        old = self.num_workers
        self.num_workers = n
        self.cfg.nworkers_changed(self, n, old)

    # ---- workers -------------------------------------------------------------
    def manage_workers(self) -> None:
        if len(self.workers) < self.num_workers:
            while len(self.workers) < self.num_workers:
                self.spawn_worker()
                time.sleep(0.1 * random.random())
        excess = len(self.workers) - self.num_workers
        if excess > 0:
            oldest = sorted(self.workers.items(), key=lambda kv: kv[1].age)[:excess]
            for pid, _ in oldest:
                self.kill_worker(pid, signal.SIGTERM)
        if self.stats is not None:
            self.stats.ensure_running()

    def worker_max_requests(self) -> int:
        limit = int(self.cfg.max_requests)
        if limit <= 0:
            return 0
        return limit + random.randint(0, max(0, int(self.cfg.max_requests_jitter)))

    def murder_workers(self) -> None:
        """``--timeout``: a worker whose slot shows no sign of life for longer than the
        timeout is dumped, aborted (SIGABRT: its handler answers the client with a 500)
        and, if still there on the next pass, killed. Waiting on a client socket does
        not count (state ``io``): the socket timeouts bound that."""
        timeout = float(self.cfg.timeout)
        if timeout <= 0:
            return
        for pid, worker in list(self.workers.items()):
            snap = self.board.snapshot(worker.slot)
            limit = 2 * timeout if snap["state"] == "io" else timeout
            if snap["heartbeat_age"] <= limit:
                continue
            if not worker.aborted:
                self.log.critical("WORKER TIMEOUT (pid:%s)", pid)
                if snap["request"]:
                    self.log.critical(
                        "Worker (pid:%s) was serving %s for %.1f s; its threads' stacks follow",
                        pid,
                        snap["request"],
                        snap["request_age"] or 0.0,
                    )
                worker.aborted = True
                worker.aborted_at = time.monotonic()
                self.kill_worker(pid, SIG_DUMP_STACKS)
                self.kill_worker(pid, SIG_ANSWER_HUNG)
                self.kill_worker(pid, signal.SIGABRT)
            elif time.monotonic() - worker.aborted_at >= ABORT_GRACE:
                self.kill_worker(pid, signal.SIGKILL)

    def recycle_fat_workers(self) -> None:
        """``--max-worker-memory``: a worker whose resident memory passed the limit is
        told to stop gracefully (TERM: it finishes its request, the backlog stays with
        the other workers) and is replaced, like max-requests but driven by the leak
        itself rather than a guess at how many requests it takes."""
        limit_mib = int(self.cfg.max_worker_memory)
        if limit_mib <= 0:
            return
        for pid, worker in list(self.workers.items()):
            if worker.recycling:
                continue
            rss = rss_mib(pid)
            if rss is not None and rss > limit_mib:
                self.log.warning(
                    "Worker (pid:%s) uses %.0f MiB, over --max-worker-memory %s MiB: "
                    "restarting it after its current request",
                    pid,
                    rss,
                    limit_mib,
                )
                worker.recycling = True
                self.kill_worker(pid, signal.SIGTERM)

    def spawn_worker(self) -> int:
        if not self.free_slots:
            self.log.error("No free scoreboard slot: not starting another worker")
            return 0
        self.worker_age += 1
        slot = self.free_slots.pop()
        worker = Worker(
            self.worker_age,
            self.pid,
            self.listeners,
            self.app_uri,
            self.cfg,
            self.log,
            self.worker_max_requests(),
            self.preloaded_app,
        )
        worker.board = self.board
        worker.slot = slot
        self.board.claim(slot, worker.max_requests)
        self.cfg.pre_fork(self, worker)
        self.log.flush()
        pid = os.fork()
        if pid != 0:
            worker.pid = pid
            self.workers[pid] = worker
            return pid
        # The child: never return into the master's loop.
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            os.close(self._pipe_r)
            os.close(self._pipe_w)
            if self.stats is not None:
                self.stats.close_in_child()
            self.control.close_in_child()
            worker.pid = os.getpid()
            self.board.set_pid(worker.slot, worker.pid)
            proctitle.set_title(f"worker [{self.proc_name}]")
            self.log.info("Booting worker with pid: %s", worker.pid)
            self.cfg.post_fork(self, worker)
            code = boot(worker)
        except BaseException:
            self.log.exception("Exception in worker process")
            code = WORKER_BOOT_ERROR if not worker.booted else 1
        finally:
            try:
                self.log.info("Worker exiting (pid: %s)", worker.pid)
                self.cfg.worker_exit(self, worker)
                self.log.flush()
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def kill_worker(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            self.workers.pop(pid, None)

    def kill_workers(self, sig: int) -> None:
        for pid in list(self.workers):
            self.kill_worker(pid, sig)

    def reap_workers(self, halting: bool = True) -> None:
        """Collect exited workers; a boot or app-load failure halts the master."""
        while True:
            try:
                wpid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not wpid:
                return
            worker = self.workers.pop(wpid, None)
            if worker is None:
                if self.stats is not None and self.stats.reaped(wpid, status):
                    continue
                if wpid == self.reexec_pid:  # the USR2 master exited: allow another
                    self.reexec_pid = 0
                    code = os.waitstatus_to_exitcode(status)
                    if code:
                        self.log.error("New master (pid:%s) exited with code %s", wpid, code)
                continue  # not ours (e.g. ferrocorn running as PID 1)
            self.board.release(worker.slot)
            self.free_slots.append(worker.slot)
            code = os.waitstatus_to_exitcode(status)
            if worker.aborted:
                # Not "Perhaps out of memory?": we know why it died.
                self.log.error(
                    "Worker (pid:%s) was stopped after WORKER TIMEOUT (%s)",
                    wpid,
                    f"exit code {code}" if code >= 0 else signal.Signals(-code).name,
                )
            elif code > 0:
                self.log.error("Worker (pid:%s) exited with code %s.", wpid, code)
            elif code < 0:
                sig = -code
                name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
                if sig == signal.SIGKILL:
                    self.log.error("Worker (pid:%s) was sent SIGKILL! Perhaps out of memory?", wpid)
                elif sig == signal.SIGTERM:
                    self.log.info("Worker (pid:%s) was sent SIGTERM!", wpid)
                else:
                    self.log.warning("Worker (pid:%s) was sent %s!", wpid, name)
            self.cfg.child_exit(self, worker)
            if halting and code == WORKER_BOOT_ERROR:
                raise HaltServer("Worker failed to boot.", WORKER_BOOT_ERROR)
            if halting and code == APP_LOAD_ERROR:
                raise HaltServer("App failed to load.", APP_LOAD_ERROR)

    # ---- stopping ------------------------------------------------------------
    def stop(self, graceful: bool = True) -> None:
        """Stop the workers: TERM lets them finish (within graceful_timeout), QUIT
        ends them at once. Listeners are closed first so no new connection is queued
        to this master's sockets once the workers are gone."""
        # A unix socket path stays when a USR2 master shares it or systemd owns it.
        unlink = self.reexec_pid == 0 and self.master_pid == 0 and not self.systemd
        self.control.close()  # only ever unlinks the file it created
        if self.stats is not None:
            self.stats.close()
        for lst in self.listeners:
            lst.close(unlink)
        self.listeners = []
        sig = signal.SIGTERM if graceful else signal.SIGQUIT
        limit = time.monotonic() + float(self.cfg.graceful_timeout)
        self.kill_workers(sig)
        while self.workers and time.monotonic() < limit:
            self.reap_workers(halting=False)
            time.sleep(0.05)
        self.kill_workers(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.workers and time.monotonic() < deadline:
            self.reap_workers(halting=False)
            time.sleep(0.02)

    def halt(self, reason: str | None = None, exit_status: int = 0) -> None:
        systemd.sd_notify("STOPPING=1", self.log)
        self.stop()
        self.log.info("Shutting down: Master")
        if reason is not None:
            self.log.info("Reason: %s", reason)
        if self.pidfile is not None:
            self.pidfile.unlink()
        self.cfg.on_exit(self)
        self.log.flush()
        sys.exit(exit_status)
