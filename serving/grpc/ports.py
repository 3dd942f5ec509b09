"""Owning the server's port: refuse one that another process holds, while our own workers share it.

gRPC binds with SO_REUSEPORT, which the workers of one server need, but which also lets a second server
(or any program using SO_REUSEPORT) bind the same port without error and take part of the new
connections. So before any worker binds, the server claims the port with a socket bound *without*
SO_REUSEPORT: that bind fails if anything holds the port, whatever its options. Once bound, the claim
switches SO_REUSEPORT on (and SO_REUSEADDR off), so the workers -- and only sockets that ask to share --
can join, and a second cnnserve server's own claim fails. The claim never listens, so the kernel never
hands it a connection; it is held until the server exits.
"""

from __future__ import annotations

import errno
import socket


class PortInUseError(OSError):
    """The port is held by another process (another server, or any program listening on it)."""


def claim_port(host: str, port: int) -> socket.socket:
    """A bound, non-listening socket holding `host:port` (0: an ephemeral port) for this server's workers.

    Raises PortInUseError when another process holds the port."""
    family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    # SO_REUSEADDR lets the bind pass connections still in TIME_WAIT from an earlier run; it never lets two
    # sockets share a port while one of them listens, and it is switched off below so that nothing can
    # join the claim without SO_REUSEPORT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise PortInUseError(
                f"port {port} on {host or '*'} is in use by another process: stop it or choose another --port"
            ) from None
        raise
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock
