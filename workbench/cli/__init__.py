"""The ``workbench`` command line. Each sub-command lives in a module of its own beside this one."""

from __future__ import annotations

import click

from workbench import __version__
from workbench.cli.records import records
from workbench.cli.records_rerun import rerun_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="workbench")
def main() -> None:
    """Live Update Workbench: KHO/LUO preserve, kexec and restore cycles, benchmarks and inspection."""


records.add_command(rerun_cmd)
main.add_command(records)


def _add_optional_commands() -> None:
    import importlib

    for module, name in (
        ("workbench.cli.kernel", "kernel"),
        ("workbench.cli.guest", "guest"),
        ("workbench.cli.cycle", "cycle"),
        ("workbench.cli.bench", "bench"),
        ("workbench.cli.inspect", "inspect"),
        ("workbench.cli.abi", "abi"),
        ("workbench.cli.preflight", "preflight_cmd"),
        ("workbench.cli.qualify", "qualify_cmd"),
        ("workbench.cli.notebooks", "run_notebook"),
        ("workbench.cli.notebooks", "demo"),
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        main.add_command(getattr(mod, name))


_add_optional_commands()
