"""The rules every service URL shares, for the backends that parse their own.

Each backend reads its URL with these helpers, so a URL is refused the same
way everywhere: an ``InvalidAddressError`` naming the URL and the reason in
one line.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from cafs.errors import InvalidAddressError

S = TypeVar("S")


def parse_url(url: str) -> SplitResult:
    if "://" not in url:
        raise InvalidAddressError(url, "expected a URL such as memory:// or sqlite:///path")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise InvalidAddressError(url, str(exc)) from None
    if not parts.scheme:
        raise InvalidAddressError(url, "missing scheme")
    return parts


def scheme_family(parts: SplitResult) -> str:
    """The scheme before ``+``, as tvix dispatches: ``objectstore+s3`` → ``objectstore``."""
    return parts.scheme.split("+", 1)[0]


def check_no_query(url: str, parts: SplitResult) -> None:
    if parts.query:
        names = ", ".join(sorted({k for k, _ in parse_qsl(parts.query, keep_blank_values=True)}))
        raise InvalidAddressError(url, f"unsupported option(s): {names or parts.query}")


def check_memory_url(url: str, parts: SplitResult) -> None:
    if parts.netloc or parts.path:
        raise InvalidAddressError(url, "memory:// takes no host and no path")
    check_no_query(url, parts)


def local_path(url: str, parts: SplitResult, what: str) -> Path:
    if parts.netloc not in ("", "localhost"):
        raise InvalidAddressError(url, f"{what} URLs take no host (use three slashes)")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise InvalidAddressError(url, f"{what} needs an absolute path")
    if path == "/":
        raise InvalidAddressError(url, "refusing to use / as a store")
    return Path(path)


def sqlite_database_path(url: str, parts: SplitResult) -> Path | None:
    """The file of a ``sqlite:///path`` URL; None for ``sqlite://``, a throwaway in-memory store."""
    check_no_query(url, parts)
    if not parts.netloc and not parts.path:
        return None
    return local_path(url, parts, "sqlite")


def query_options(url: str, parts: SplitResult, allowed: set[str] | None = None) -> dict[str, str]:
    """``?k=v&…`` as a dict; a repeated or (when ``allowed`` is given) unknown key is refused."""
    options: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if allowed is not None and key not in allowed:
            names = ", ".join(sorted(allowed)) or "none"
            raise InvalidAddressError(url, f"unsupported option {key!r} (known: {names})")
        if key in options:
            raise InvalidAddressError(url, f"{key} is given twice")
        options[key] = value
    return options


def cache_urls(url: str, parts: SplitResult, extra: frozenset[str] = frozenset()) -> dict[str, str]:
    """The options of ``cache://?near=URL&far=URL[&…]``, near and far required.

    The values are URLs themselves, so they are split at the first ``=``
    only and %-decoded without turning ``+`` into a space
    (``far=grpc+unix:///run/cafs.sock`` works as written). A value with a
    query of its own keeps the ``&k=v`` pairs that follow it, up to the next
    option of the cache (``far=objectstore+s3://b/p?endpoint=…&region=…``);
    ``%26`` writes an ``&`` anywhere. ``extra`` names the other options the
    caller accepts.
    """
    if parts.netloc or parts.path:
        raise InvalidAddressError(url, "cache:// takes no host and no path, only ?near=…&far=…")
    known = {"near", "far"} | extra
    pairs: list[str] = []
    for pair in parts.query.split("&") if parts.query else []:
        key = pair.partition("=")[0]
        if pairs and key not in known and "?" in pairs[-1].partition("=")[2]:
            pairs[-1] += "&" + pair  # an option of the URL before it
        else:
            pairs.append(pair)
    found: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if key not in known:
            names = ", ".join(sorted(known))
            raise InvalidAddressError(url, f"unsupported option {key!r} (cache takes {names})")
        if not sep or not value:
            raise InvalidAddressError(url, f"{key} needs a value")
        if key in found:
            raise InvalidAddressError(url, f"{key} is given twice")
        found[key] = unquote(value)
    for key in ("near", "far"):
        if key not in found:
            raise InvalidAddressError(url, f"cache needs {key}=URL")
    return found


def cache_sides(url: str, sides: dict[str, str], build: Callable[[str], S]) -> tuple[S, S]:
    """Near and far of a cache URL, built by ``build``; a bad side names the cache URL."""
    built = []
    for key in ("near", "far"):
        try:
            built.append(build(sides[key]))
        except InvalidAddressError as exc:
            raise InvalidAddressError(url, f"{key}: {exc}") from None
    return built[0], built[1]


def deadline_option(url: str, value: str) -> float:
    """A ``?deadline=SECONDS`` value: a number of seconds above 0 (a bad one names the URL)."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 1e6:
        raise InvalidAddressError(
            url, f"deadline must be a number of seconds above 0, not {value!r}"
        )
    return seconds


def parse_size(value: str) -> int | None:
    """A byte count such as ``500M``, ``2GiB`` (powers of 1024) or plain bytes; None if not one."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = value.strip().upper().removesuffix("IB").removesuffix("B")
    unit = text[-1:] if text[-1:] in units and text[-1:] else ""
    number = text[: len(text) - len(unit)]
    try:
        size = int(float(number) * units[unit])
    except ValueError:
        return None
    return size if size >= 0 else None


def size_option(url: str, key: str, value: str) -> int:
    """A byte count such as ``500M`` or ``2G`` (powers of 1024) or plain bytes, above 0."""
    size = parse_size(value)
    if not size:
        raise InvalidAddressError(url, f"{key} must be a size such as 500M or 2G, not {value!r}")
    return size


def unsupported(url: str, parts: SplitResult) -> InvalidAddressError:
    return InvalidAddressError(url, f"scheme {parts.scheme!r} is not supported by this cafs build")


Backends = dict[str, str | None]
"""Scheme family → ``"module:Class"`` whose ``from_url`` builds the service; None: a tvix
backend this build does not have."""


def backend_for(url: str, parts: SplitResult, backends: Backends, what: str) -> Any:
    """The class that serves ``url``, imported only now so a command loads only what it uses."""
    family = scheme_family(parts)
    if family not in backends:
        known = ", ".join(f"{name}://" for name, spec in backends.items() if spec)
        raise InvalidAddressError(url, f"unknown {what} scheme {parts.scheme!r} (known: {known})")
    spec = backends[family]
    if spec is None:
        raise unsupported(url, parts)
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)
