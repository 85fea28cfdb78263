"""The content-addressed layer: digests, nodes, directories and their services."""
