"""Where a server listens (``host:port`` or a unix socket path), checked before it binds,
so a failure names its reason in one line.

A socket file left by a server that did not shut down is replaced; one that a
live server answers on is never taken over.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cafs.errors import CafsError


class ListenError(CafsError):
    """An address a server cannot listen on."""


def check_socket_path(text: str, path: Path) -> None:
    """Refuse a socket path another server listens on, or that cannot be bound."""
    if path.is_socket():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(os.fsencode(path))
            except OSError:
                path.unlink()  # left by a daemon that did not shut down
                return
        raise ListenError(f"cannot listen on {text}: another server is listening there")
    if os.path.lexists(path):
        raise ListenError(f"cannot listen on {text}: it exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(os.fsencode(path))
        except OSError as exc:
            raise ListenError(f"cannot listen on {text}: {exc.strerror or exc}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                if path.is_socket():
                    path.unlink()


def listen_unix(text: str, backlog: int = 1) -> socket.socket:
    """A non-blocking socket listening at ``text``; ListenError naming why not."""
    path = Path(text).absolute()
    check_socket_path(text, path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fsencode(path))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {text}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


@dataclass(frozen=True)
class ListenAddress:
    """``host:port`` (TCP) or a path starting with ``/`` or ``.`` (a unix socket)."""

    text: str

    @property
    def socket_path(self) -> Path | None:
        if self.text.startswith(("/", ".")):
            return Path(self.text).absolute()
        return None

    @property
    def target(self) -> str:
        path = self.socket_path
        return f"unix://{path}" if path is not None else self.text

    @property
    def host_port(self) -> tuple[str, int]:
        """A TCP address's host (brackets of IPv6 removed) and port."""
        host, _, port = self.text.rpartition(":")
        return host.removeprefix("[").removesuffix("]"), int(port)


def parse_listen_address(text: str) -> ListenAddress:
    if text.startswith(("/", ".")):
        return ListenAddress(text)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ListenError(
            f"invalid listen address {text!r}: expected host:port or a socket path "
            "starting with / or ."
        )
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ListenError(f"invalid listen address {text!r}: write IPv6 hosts as [::1]:port")
    return ListenAddress(text)


def check_bindable(address: ListenAddress) -> None:
    """Raise ListenError naming why ``address`` cannot be listened on; remove a stale socket."""
    path = address.socket_path
    if path is not None:
        check_socket_path(address.text, path)
    else:
        check_tcp_address(address.text)


def check_tcp_address(text: str) -> None:
    """Resolve and bind ``host:port`` once, as the server will, to name what is wrong."""
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        found = socket.getaddrinfo(
            host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ListenError(
            f"cannot listen on {text}: cannot resolve {host!r}: {exc.strerror}"
        ) from None
    errors: list[OSError] = []
    for family, kind, proto, _, address in found:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc binds
                probe.bind(address)
        except OSError as exc:
            errors.append(exc)
        else:
            return  # grpc listens on every address it can bind, so one is enough
    reason = errors[0].strerror if errors else "no address"
    raise ListenError(f"cannot listen on {text}: {reason}")
