"""Benchmark tooling: a synthetic organization in CAI export form, and the scan-versus-decode measurement."""
