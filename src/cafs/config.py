"""Where the embedded store lives, and the service URLs it is made of.

A leaf: it imports nothing of cafs, so every layer may ask it.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote


def store_home() -> Path:
    """``$CAFS_HOME``, else ``$XDG_DATA_HOME/cafs``, else ``~/.local/share/cafs``."""
    explicit = os.environ.get("CAFS_HOME")
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg).expanduser().absolute() / "cafs"
    return Path.home() / ".local" / "share" / "cafs"


def default_blob_service_addr() -> str:
    return "objectstore+file://" + quote(str(store_home() / "objects"))


def default_directory_service_addr() -> str:
    return "sqlite://" + quote(str(store_home() / "directories.sqlite"))


def default_path_info_service_addr() -> str:
    return "sqlite://" + quote(str(store_home() / "pathinfo.sqlite"))
