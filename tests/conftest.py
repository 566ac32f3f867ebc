import os

import pytest

# Keep the suite predictable on the 2-core CI machine: `make test` runs two pytest-xdist workers, one
# core each (the end-to-end tests' processes run on one thread already); a plain `pytest` uses both.
os.environ.setdefault("OMP_NUM_THREADS", "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2")


@pytest.fixture(scope="module")
def one_thread():
    """torch on one intra-op thread for a test module (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
