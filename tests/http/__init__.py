"""HTTP: nar-bridge and the nix+http PathInfoService, against real servers on 127.0.0.1."""
