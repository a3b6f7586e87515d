"""The source most conversion tests read: :data:`~tests.kernels.conversion.helpers.SIZE` bytes of touched
anonymous memory, one per test module."""

import pytest

from tests.kernels.conversion.helpers import SIZE
from workbench.kernels.conversion.sources import make_source


@pytest.fixture(scope="module")
def source():
    source = make_source(SIZE)
    yield source
    source.close()
