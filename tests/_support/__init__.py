"""What the tests of every room share: the data paths, checks of a run's scores, weight layouts and
a tiny training set-up. Imported as ``tests._support.<module>`` (the repository root is on
``sys.path`` through pytest's ``pythonpath`` setting). Fixtures live in the ``conftest.py`` files."""
