"""Where the daemon listens: ``host:port`` or a unix socket path, checked before binding.

grpc reports a failed bind only as "Failed to bind", after a log line of its
own on stderr; trying the address first names the reason in one line. A
socket file left by a daemon that did not shut down is replaced; one that a
live server answers on is not taken over.
"""

from __future__ import annotations

from cafs.sockets import ListenAddress, check_bindable, parse_listen_address

__all__ = ["DEFAULT_LISTEN_ADDRESS", "ListenAddress", "check_bindable", "grpc_url",
           "parse_listen_address"]  # fmt: skip

DEFAULT_LISTEN_ADDRESS = "127.0.0.1:8000"


def grpc_url(address: ListenAddress, port: int) -> str:
    """The URL clients use for the bound address."""
    path = address.socket_path
    if path is not None:
        return f"grpc+unix://{path}"
    host = address.text.rsplit(":", 1)[0]
    return f"grpc+http://{host}:{port}"
