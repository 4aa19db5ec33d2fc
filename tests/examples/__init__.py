"""Tests of the ISIC example scripts and their pieces (``examples/``)."""
