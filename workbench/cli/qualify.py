"""``workbench qualify``: does a live update work from each kernel to each other one?"""

from __future__ import annotations

import click

from workbench.cli.common import SIZE, data_option, json_option
from workbench.cli.output import emit_frame, emit_json, fail

__all__ = ["qualify_cmd"]


def _names(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@click.command("qualify")
@click.option("--kernels", required=True, help="The kernels, comma-separated: 7.2,7.3[,7.2+VARIANT|FOLDER…].")
@click.option(
    "--checks",
    help="Checks, comma-separated (default: memfd,luo_kexec_simple,luo_multi_session,criu; criu runs only where a "
    "kernel kexecs into itself).",
)
@click.option(
    "--size",
    "sizes",
    type=SIZE,
    multiple=True,
    help="A memfd of the memfd check; repeat (default 256M, 16M, 1M+4K, 4K).",
)
@click.option("--small-files", type=int, help="Small files in the memfd check's second session (default 64).")
@click.option("--criu-size", type=SIZE, help="Anonymous memory of the CRIU check's process (default 32M).")
@click.option("--scheduler", help="A Dask scheduler's address (tcp://host:8786); default: a local cluster.")
@click.option("--workers", type=int, help="VMs at once on the local cluster (default: as the cores and memory allow).")
@click.option("--cpus", type=int, default=1, show_default=True, help="vCPUs of each VM.")
@click.option("--no-preflight", is_flag=True, help="Do not check the formats before each kexec.")
@click.option("--force", is_flag=True, help="Kexec even where the preflight refuses (the cell shows what happens).")
@data_option
@json_option
def qualify_cmd(
    kernels, checks, sizes, small_files, criu_size, scheduler, workers, cpus, no_preflight, force, data_dir, as_json
) -> None:
    """Qualify a live update between kernels: for every ordered pair (from → to, each kernel into itself
    included), boot `from` in the lab VM, preserve memfds of several sizes and a session of many small files, run
    upstream's liveupdate selftests (stage 1 in `from`, stage 2 in `to`, each built from its kernel's own sources)
    and, same-version, CRIU; kexec into `to` and verify. Each cell ends pass, refused, fail, panic or hang, with
    the stage, a diagnosis from the serial log and its cycle records; the qualification is one record. Exit
    status 1 unless every cell passed."""
    import pandas as pd

    from workbench.lab.errors import LabError
    from workbench.qualify import QualifyError, QualifyParams, qualify
    from workbench.records import open_store

    options = {"kernels": _names(kernels), "cpus": cpus, "preflight": not no_preflight, "force": force}
    if checks:
        options["checks"] = _names(checks)
    if sizes:
        options["sizes"] = list(sizes)
    if small_files is not None:
        options["small_files"] = small_files
    if criu_size is not None:
        options["criu_size"] = criu_size

    def progress(row) -> None:
        if not as_json:
            where = f" at {row['stage']}" if row["stage"] else ""
            why = f": {row['diagnosis'] or row['message']}" if row["outcome"] != "pass" else ""
            click.echo(f"{row['from']} → {row['to']} {row['check']}: {row['outcome']}{where}{why}", err=True)

    try:
        result = qualify(
            QualifyParams(**options),
            scheduler=scheduler,
            workers=workers,
            store=open_store(data_dir),
            on_cell=progress,
            progress=not as_json,
        )
    except (QualifyError, LabError) as exc:
        fail(str(exc), 2)
    if as_json:
        emit_json(result)
    else:
        frame = pd.DataFrame(result["cells"])[["from", "to", "check", "outcome", "stage", "blackout_s", "diagnosis"]]
        emit_frame(frame)
        verdict = "qualified" if result["qualified"] else "NOT qualified"
        click.echo(
            f"{verdict}: {result['outcomes']}; wall {result['wall_s']:.0f} s for {result['cells_s']:.0f} s of cells "
            f"on {result['workers']} worker(s) ({', '.join(result['accelerators']) or 'no accelerator recorded'}); "
            f"record {result['record_id']}"
        )
    if not result["qualified"]:
        raise SystemExit(1)
