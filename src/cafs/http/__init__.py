"""HTTP: Nix binary caches, both ways.

``nar_bridge`` serves a store as a binary cache (narinfo files and NARs
rendered on the fly, uploads from ``nix copy --to``); the ``nix+http://``
PathInfoService (``cafs.store.pathinfos.nix_http``) reads one, ingesting
NARs as they are asked for. Both use ``cafs.store.nar.compression``.
"""
