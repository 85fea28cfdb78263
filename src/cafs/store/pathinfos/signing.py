"""A PathInfoService that signs every PathInfo it stores.

Lets a store act as its own binary cache: each put gets an Ed25519
signature of the narinfo fingerprint, so Nix clients trusting the key accept
what nar-bridge serves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from cafs.store.pathinfo import PathInfo
from cafs.store.pathinfos.base import PathInfoService
from cafs.store.signatures import SigningKey


class SigningPathInfoService(PathInfoService):
    """Appends a signature on put, then forwards to ``inner``; reads pass straight through."""

    def __init__(self, inner: PathInfoService, signing_key: SigningKey) -> None:
        self.inner = inner
        self._key = signing_key

    async def get(self, digest: bytes) -> PathInfo | None:
        return await self.inner.get(digest)

    async def put(self, info: PathInfo) -> PathInfo:
        signature = self._key.sign(info.fingerprint())
        return await self.inner.put(info.with_signature(signature))

    async def list(self) -> AsyncIterator[PathInfo]:
        async for info in self.inner.list():
            yield info

    async def close(self) -> None:
        await self.inner.close()
