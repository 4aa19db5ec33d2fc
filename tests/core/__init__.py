"""Tests of the attnblocks library: one file per module or concern of ``attnblocks/``."""
