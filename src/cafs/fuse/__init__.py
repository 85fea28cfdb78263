"""The FUSE protocol, spoken by cafs itself.

``abi`` holds the kernel's message layouts and constants; ``server`` is the
session that turns one request into its reply by calling the ``cafs.fs``
model, with no I/O; ``mount`` and ``devfuse`` are the ``/dev/fuse``
transport (mounting, the fd on asyncio, unmounting). A virtio transport
feeds the same session from virtqueues.
"""

DEFAULT_THREADS = 16
"""Requests served at once, unless ``--threads`` says otherwise. Kept here, free
of imports, so the CLI can show it without loading the protocol."""
