"""The one mapping between cafs errors and gRPC status codes, in both directions.

Servers turn a cafs error into a status (``status_of``) and refuse a call
for a reason of their own (``refuse`` with a ``Refusal``); clients turn a
status back into a cafs error (``error_from``). No other module names a
status code. The codes follow tvix: invalid requests are INVALID_ARGUMENT,
storage failures DATA_LOSS (``storage error: ...``), anything else INTERNAL.
Where tvix answers one RPC step with another code (a bad directory closure
is INTERNAL), the server passes that refusal in for validation errors.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import NoReturn

import grpc
import grpc.aio

from cafs.errors import (
    CafsError,
    IntegrityError,
    RemoteError,
    StorageError,
    ValidationError,
)

log = logging.getLogger(__name__)


class Refusal(Enum):
    """Why a server ends a call, where no cafs error says it, and the code that tells."""

    MISSING = grpc.StatusCode.NOT_FOUND
    """What was asked for is not stored."""
    BAD_REQUEST = grpc.StatusCode.INVALID_ARGUMENT
    """The request breaks a rule of the protocol."""
    UNSPECIFIED = grpc.StatusCode.UNIMPLEMENTED
    """A request's ``oneof`` is unset (tvix answers PathInfo Get so)."""
    FAILED = grpc.StatusCode.INTERNAL
    """The server could not do it (tvix: copying a blob, a closure, a listing)."""
    LOST = grpc.StatusCode.DATA_LOSS
    """Stored data could not be read back whole."""


# Codes that say "the request was wrong", so the client reports a validation error.
_REQUEST_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)


def status_of(
    exc: BaseException, validation: Refusal = Refusal.BAD_REQUEST
) -> tuple[grpc.StatusCode, str]:
    """The status a server answers ``exc`` with."""
    if isinstance(exc, ValidationError):
        return validation.value, str(exc)
    if isinstance(exc, RemoteError):
        # A daemon in front of another daemon passes the far side's answer on.
        return getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNAVAILABLE), str(exc)
    if isinstance(exc, IntegrityError):
        return grpc.StatusCode.DATA_LOSS, str(exc)
    if isinstance(exc, StorageError):
        return grpc.StatusCode.DATA_LOSS, f"storage error: {exc}"
    if isinstance(exc, CafsError):
        return grpc.StatusCode.INTERNAL, str(exc)
    log.error("unexpected error in a gRPC call", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


async def abort(
    context: grpc.aio.ServicerContext[object, object],
    exc: BaseException,
    validation: Refusal = Refusal.BAD_REQUEST,
) -> NoReturn:
    """End the call with the status of ``exc``."""
    code, message = status_of(exc, validation)
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


async def refuse(
    context: grpc.aio.ServicerContext[object, object], why: Refusal, message: str
) -> NoReturn:
    """End the call for a reason of the server's own."""
    await context.abort(why.value, message)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


def is_missing(exc: grpc.aio.AioRpcError) -> bool:
    """Whether a failed call means "not stored" (a client answers None, not an error)."""
    return exc.code() == Refusal.MISSING.value


def error_from(exc: grpc.aio.AioRpcError, what: str) -> CafsError:
    """The cafs error for a failed call; ``what`` names the call for the message."""
    code = exc.code()
    details = exc.details() or code.name
    if code in _REQUEST_CODES:
        return ValidationError(f"{what}: {details}")
    if code == grpc.StatusCode.DATA_LOSS:
        return RemoteError(f"{what}: the server reports lost or corrupt data: {details}", code.name)
    return RemoteError(f"{what}: {code.name}: {details}", code.name)
