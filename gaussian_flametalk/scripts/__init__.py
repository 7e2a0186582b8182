"""The ``gft`` command line and benchmark scripts."""
