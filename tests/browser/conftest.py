"""Fixtures of the browser tests (defined in jlab.py): `lab` and `browser`."""

from jlab import browser, lab  # noqa: F401
