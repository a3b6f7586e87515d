"""The build tools: a version from a real compiler, and clear errors for a missing or broken tool."""

import pytest

from workbench.lab.errors import SelftestBuildError
from workbench.lab.toolchain import tool_version


def test_a_real_compilers_version_is_its_first_line():
    assert tool_version("gcc", what="C compiler", purpose="tests", error=SelftestBuildError).startswith("gcc")


def test_a_missing_or_broken_tool_raises_the_callers_error(tmp_path):
    with pytest.raises(SelftestBuildError, match="no C compiler: 'no-such-cc' is not on PATH; tests are compiled"):
        tool_version("no-such-cc", what="C compiler", purpose="tests", error=SelftestBuildError)
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\nexit 3\n")
    broken.chmod(0o755)
    with pytest.raises(SelftestBuildError, match="does not run: .* exited 3"):
        tool_version(str(broken), what="C compiler", purpose="tests", error=SelftestBuildError)
