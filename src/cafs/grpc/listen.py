"""Where the daemon listens: ``host:port`` or a unix socket path, checked before binding.

grpc reports a failed bind only as "Failed to bind", after a log line of its
own on stderr; trying the address first names the reason in one line. A
socket file left by a daemon that did not shut down is replaced; one that a
live server answers on is not taken over.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from cafs.sockets import ListenError, check_socket_path

DEFAULT_LISTEN_ADDRESS = "127.0.0.1:8000"


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

    def url(self, port: int) -> str:
        """The URL clients use for the bound address."""
        path = self.socket_path
        if path is not None:
            return f"grpc+unix://{path}"
        host = self.text.rsplit(":", 1)[0]
        return f"grpc+http://{host}:{port}"


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
