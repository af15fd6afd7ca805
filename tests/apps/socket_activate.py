"""A stand-in for systemd socket activation (like ``systemd-socket-activate``).

    python socket_activate.py ADDRESS [ADDRESS ...] -- COMMAND [ARGS ...]

Binds and listens on each ADDRESS (``HOST:PORT``, port 0 allowed, or ``unix:PATH``),
moves the sockets to descriptors 3, 4, ..., sets ``LISTEN_FDS`` and ``LISTEN_PID`` (this
process's pid, which ``exec`` keeps) and execs COMMAND.
"""

import os
import socket
import sys


def listen(spec: str) -> socket.socket:
    if spec.startswith("unix:"):
        path = spec[len("unix:"):]
        if os.path.exists(path):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
    else:
        host, _, port = spec.rpartition(":")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), int(port)))
    sock.listen(128)
    return sock


def main() -> None:
    args = sys.argv[1:]
    split = args.index("--")
    specs, command = args[:split], args[split + 1:]
    socks = [listen(spec) for spec in specs]
    # Out of the way first, so that moving one socket to 3+n cannot clobber another.
    high = [os.dup2(s.fileno(), 100 + n) for n, s in enumerate(socks)]
    for s in socks:
        s.close()
    for n, fd in enumerate(high):
        os.dup2(fd, 3 + n)  # inheritable
        os.close(fd)
    os.environ["LISTEN_FDS"] = str(len(socks))
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
