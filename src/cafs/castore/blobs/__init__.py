"""Blob services: where file contents live, addressed by BLAKE3."""

from cafs.castore.blobs.base import BlobReader, BlobService, BlobWriter, ChunkMeta

__all__ = ["BlobReader", "BlobService", "BlobWriter", "ChunkMeta"]
