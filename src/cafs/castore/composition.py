"""Turning castore service URLs into services.

A table per service kind, from URL scheme to the backend that parses the rest
of its URL, as tvix's ``from_addr`` dispatches on the part of the scheme before
``+``. A new backend is a row here and a ``from_url`` on its class.
"""

from __future__ import annotations

from cafs.castore.blobs.base import BlobService
from cafs.castore.directories.base import DirectoryService
from cafs.urls import Backends, backend_for, parse_url

BLOB_BACKENDS: Backends = {
    "memory": "cafs.castore.blobs.memory:MemoryBlobService",
    "objectstore": "cafs.castore.blobs.objectstore:ObjectStoreBlobService",
    "grpc": "cafs.castore.blobs.grpc:GrpcBlobService",
    "cache": "cafs.castore.blobs.cache:CachedBlobService",
}

DIRECTORY_BACKENDS: Backends = {
    "memory": "cafs.castore.directories.memory:MemoryDirectoryService",
    "sqlite": "cafs.castore.directories.sqlite:SqliteDirectoryService",
    "objectstore": "cafs.castore.directories.objectstore:ObjectStoreDirectoryService",
    "grpc": "cafs.castore.directories.grpc:GrpcDirectoryService",
    "cache": "cafs.castore.directories.cache:CachedDirectoryService",
    "redb": None,
    "bigtable": None,
}


def blob_service_from_addr(url: str) -> BlobService:
    parts = parse_url(url)
    service: BlobService = backend_for(url, parts, BLOB_BACKENDS, "blob service").from_url(
        url, parts
    )
    return service


def directory_service_from_addr(url: str) -> DirectoryService:
    parts = parse_url(url)
    backend = backend_for(url, parts, DIRECTORY_BACKENDS, "directory service")
    service: DirectoryService = backend.from_url(url, parts)
    return service
