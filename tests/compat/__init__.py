"""Compatibility with the real Nix: cafs against nix-store and nix on the same inputs."""
