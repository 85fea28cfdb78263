"""The Nix layer: store paths, path infos, NAR archives, narinfo and signatures."""
