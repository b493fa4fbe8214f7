"""Reproducible experiments built on the library's public functions (not imported by hashjax)."""
