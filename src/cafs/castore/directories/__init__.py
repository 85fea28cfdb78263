"""Directory services: where Directory messages live, addressed by BLAKE3."""

from cafs.castore.directories.base import DirectoryPutter, DirectoryService

__all__ = ["DirectoryPutter", "DirectoryService"]
