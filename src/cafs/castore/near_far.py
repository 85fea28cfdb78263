"""What every cache combinator shares: a near service in front of a far one."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar


class Connectable(Protocol):
    async def connect(self) -> None: ...

    async def close(self) -> None: ...


S = TypeVar("S", bound=Connectable)


class NearFar(Generic[S]):
    """Holds both sides; connects both, and closes both however the first close ends.

    A cache lists this base first, so its ``connect`` and ``close`` are these.
    """

    def __init__(self, near: S, far: S) -> None:
        self.near = near
        self.far = far

    async def connect(self) -> None:
        await self.near.connect()
        await self.far.connect()

    async def close(self) -> None:
        try:
            await self.near.close()
        finally:
            await self.far.close()
