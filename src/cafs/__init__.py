"""cafs: a content-addressed store with a lazy, read-only FUSE filesystem."""

__version__ = "0.1.0"
