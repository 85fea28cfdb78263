"""Fuzz targets: every parser of untrusted input, fed generated and mutated bytes."""
