"""PathInfo services: where PathInfos live, looked up by store path digest."""

from cafs.store.pathinfos.base import PathInfoService

__all__ = ["PathInfoService"]
