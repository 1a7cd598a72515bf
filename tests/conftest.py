"""Shared pytest configuration: reproducible (derandomised) hypothesis runs, as in scipy's CI."""

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=50)
settings.load_profile("ci")
