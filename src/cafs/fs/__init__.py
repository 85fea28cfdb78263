"""The read-only filesystem: a castore tree (or a Nix store) served lazily.

``filesystem`` holds the model (inodes, handles, every operation and its
errno) with no FUSE in it, so it can be tested and reused; ``fuse`` adapts it
to pyfuse3; ``daemon`` mounts, serves and unmounts.
"""

# pyfuse3 worker tasks serving requests at once, unless --threads says otherwise.
# Kept here, free of FUSE imports, so the CLI can show it without loading pyfuse3.
DEFAULT_THREADS = 16
