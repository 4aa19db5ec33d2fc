"""Benchmarks of attnblocks: block and model throughput, activation memory, data pipelines.

Every benchmark is a module runnable as ``python -m benchmarks.<name>`` and shares
:mod:`benchmarks.harness` (timing, alternating A/B comparison, saved-activation bytes, run metadata,
JSON results with a fixed schema). See ``benchmarks/README.md`` for the method.
"""
