import pytest


@pytest.fixture(scope="session")
def lab_kernel():
    """The cached lab kernel, built on first use (15-25 minutes on 2 cores)."""
    from workbench.lab.kernel import build_kernel

    return build_kernel(progress=False)


@pytest.fixture
def store(tmp_path):
    from workbench.records import RecordStore

    return RecordStore(tmp_path / "data")
