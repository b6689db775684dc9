import pytest


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One cache folder for the session's end-to-end studies: the digits supernet (tests/cli.DIGITS) is
    trained by the first study and loaded by the others."""
    return tmp_path_factory.mktemp("cache")
