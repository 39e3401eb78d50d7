"""Shared test set-up."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test runs torch on one thread: on small tensors (and on a 2-core CI machine) more
    threads only add contention, and results stay bitwise reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
