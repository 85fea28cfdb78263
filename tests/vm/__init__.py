"""Booting a real Linux guest in QEMU for end-to-end tests (virtiofs, 9p)."""
