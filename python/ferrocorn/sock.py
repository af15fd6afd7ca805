"""Listening sockets, bound by the master before any worker is forked.

Workers inherit the descriptors across fork and accept on them directly (the Rust
loop polls only while the worker is idle, so connections go to free workers).
Binding follows gunicorn's ``sock.py``: SO_REUSEADDR, five attempts one second apart
when the address is in use, stale Unix socket files replaced, umask applied.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import time
from typing import Any

from ferrocorn.glogging import Logger


class BindError(Exception):
    """A listener could not be created; the message says what to do."""


class Listener:
    """One bound, listening socket."""

    def __init__(self, sock: socket.socket, address: tuple[Any, ...]) -> None:
        self.sock = sock
        self.address = address

    @property
    def is_unix(self) -> bool:
        return self.sock.family == socket.AF_UNIX

    def fileno(self) -> int:
        return self.sock.fileno()

    def url(self) -> str:
        """As gunicorn logs it: ``http://127.0.0.1:8000`` or ``unix:/path``."""
        if self.is_unix:
            return f"unix:{self.sock.getsockname()}"
        host, port = self.sock.getsockname()[:2]
        if self.sock.family == socket.AF_INET6:
            return f"http://[{host}]:{port}"
        return f"http://{host}:{port}"

    def close(self, unlink: bool = True) -> None:
        path = self.sock.getsockname() if self.is_unix else None
        self.sock.close()
        if unlink and isinstance(path, str) and path and os.path.exists(path):
            os.unlink(path)


def _tcp_socket(host: str, port: int, backlog: int, reuse_port: bool) -> socket.socket:
    infos = socket.getaddrinfo(
        host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _unix_socket(
    path: str, backlog: int, umask: int, owner: tuple[int, int] | None = None
) -> socket.socket:
    if os.path.exists(path):
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise BindError(f"{path} exists and is not a socket; remove it or bind elsewhere")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(umask)
    try:
        sock.bind(path)
        if owner is not None:
            # --user/--group: workers that dropped privileges may still use the path.
            os.chown(path, *owner)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    return sock


def _fd_socket(fd: int, backlog: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.listen(backlog)
    return sock


def create_listeners(cfg: Any, log: Logger, fds: list[int] | None = None) -> list[Listener]:
    """Bind every address of ``cfg.bind``; raises BindError with a one-line reason.

    ``fds`` are already-listening inherited descriptors (systemd socket activation, or
    ``GUNICORN_FD`` after USR2): as in gunicorn they are adopted, together with any
    ``fd://`` binds, and the other binds are ignored."""
    if fds:
        return _adopt(cfg, fds)
    listeners: list[Listener] = []
    owner = (cfg.uid, cfg.gid)
    for address in cfg.address:
        kind = address[0]
        for attempt in range(5):
            try:
                if kind == "unix":
                    sock = _unix_socket(str(address[1]), cfg.backlog, cfg.umask, owner)
                elif kind == "fd":
                    sock = _fd_socket(int(address[1]), cfg.backlog)
                else:
                    sock = _tcp_socket(
                        str(address[1]), int(address[2]), cfg.backlog, bool(cfg.reuse_port)
                    )
                break
            except OSError as e:
                shown = _show(address)
                if e.errno == errno.EADDRINUSE:
                    log.error("Connection in use: %s", shown)
                    if attempt < 4:
                        log.error("Retrying in 1 second.")
                        time.sleep(1)
                        continue
                    raise BindError(
                        f"Can't connect to {shown}: the address is in use; stop the other "
                        "server or choose another port with -b HOST:PORT"
                    ) from e
                if e.errno == errno.EACCES:
                    raise BindError(
                        f"Can't connect to {shown}: permission denied (ports below 1024 need "
                        "root or CAP_NET_BIND_SERVICE)"
                    ) from e
                raise BindError(f"Can't connect to {shown}: {e.strerror or e}") from e
        sock.set_inheritable(True)
        sock.setblocking(False)
        listeners.append(Listener(sock, address))
    return listeners


def _adopt(cfg: Any, fds: list[int]) -> list[Listener]:
    """Wrap inherited listening descriptors; the family comes from the socket itself."""
    numbers = [int(a[1]) for a in cfg.address if a[0] == "fd"] + list(fds)
    listeners: list[Listener] = []
    for fd in dict.fromkeys(numbers):
        try:
            sock = _fd_socket(fd, cfg.backlog)
        except OSError as e:
            raise BindError(f"Can't use inherited fd {fd}: {e.strerror or e}") from e
        sock.set_inheritable(True)
        sock.setblocking(False)
        listeners.append(Listener(sock, ("fd", fd)))
    return listeners


def _show(address: tuple[Any, ...]) -> str:
    if address[0] == "tcp":
        return repr((address[1], address[2]))
    return f"{address[0]}:{address[1]}"
