"""Shared pytest configuration: reproducible (derandomised) hypothesis runs, as in scipy's CI; one-thread torch."""

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=50)
settings.load_profile("ci")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads; on a shared CPU extra threads only oversubscribe it.
    Use in a module with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
