"""NAR, Nix's archive format: rendering castore trees as NARs and ingesting NARs."""
