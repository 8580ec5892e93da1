"""Tests of the benchmark tooling and of the parallel scan it measures."""
