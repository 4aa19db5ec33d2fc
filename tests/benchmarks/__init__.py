"""Tests of the benchmarks (``benchmarks/``): the harness and the quick profiles."""
