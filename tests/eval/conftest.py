"""Fixtures for the eval tests (helpers live in eval_helpers.py)."""
import pytest
import torch

from eval_helpers import ToyCLIP


@pytest.fixture
def toy_model() -> ToyCLIP:
    return ToyCLIP().eval()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: many threads only add contention on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
