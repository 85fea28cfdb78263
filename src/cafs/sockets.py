"""Unix socket paths a server listens on: checked first, so a failure names its reason.

A socket file left by a server that did not shut down is replaced; one that a
live server answers on is never taken over.
"""

from __future__ import annotations

import contextlib
import os
import socket
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
