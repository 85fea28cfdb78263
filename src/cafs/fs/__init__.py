"""The read-only filesystem model: a castore tree (or a Nix store) served lazily.

``filesystem`` holds every operation and its errno, ``inodes`` the inode
table and its lifetimes, ``attrs`` what ``stat`` shows, ``root_nodes`` where
the names at the top come from and ``prefetch`` the read-ahead of small
files. Nothing here knows FUSE: ``cafs.fuse`` speaks the protocol onto it.
"""
