"""The test suite, in rooms that mirror the code: ``core`` (attnblocks), ``examples``, ``benchmarks``."""
