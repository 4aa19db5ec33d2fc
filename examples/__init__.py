"""Training recipes built on attnblocks (importable from the repository root)."""
