"""``workbench preflight``: can the next kernel accept what the running kernel will hand over?"""

from __future__ import annotations

import click

from workbench.cli.common import json_option
from workbench.cli.output import emit_frame, emit_json, fail

__all__ = ["preflight_cmd"]


@click.command("preflight")
@click.option("--next-kernel", required=True, help="The kernel to kexec into: a lab kernel name or folder.")
@click.option("--kernel", help="The running kernel (the one that hands over): a lab kernel (default: the lab kernel).")
@json_option
def preflight_cmd(next_kernel, kernel, as_json) -> None:
    """Compare, subsystem by subsystem (KHO, LUO, memfd, memblock...), the handover formats the running kernel
    writes with those the next kernel accepts, read from each kernel's ABI headers and confirmed in its vmlinux.
    Exit status 1 when the next kernel would refuse (the message names the subsystem). Every `workbench cycle`
    runs this first unless --no-preflight."""
    import pandas as pd

    from workbench.lab.errors import LabError
    from workbench.lab.kernel import resolve_kernel
    from workbench.lab.kernel_name import DEFAULT_VERSION
    from workbench.lab.preflight import REFUSE, preflight

    try:
        result = preflight(resolve_kernel(kernel or DEFAULT_VERSION), resolve_kernel(next_kernel))
    except (LabError, FileNotFoundError, ValueError) as exc:
        fail(str(exc), 2)
    if as_json:
        emit_json(result.as_dict())
    else:
        emit_frame(pd.DataFrame(result.checks))
        click.echo(result.message())
    if result.verdict == REFUSE:
        raise SystemExit(1)
