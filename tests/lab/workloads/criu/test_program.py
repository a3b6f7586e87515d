"""The workload program and the nftables shim build with the host's compiler."""

import subprocess

from workbench.lab.workloads.criu.program import build_nft_shim, build_workload


def test_workload_and_shim_build_on_the_host():
    binary, shim = build_workload(), build_nft_shim()
    assert binary.exists() and shim.exists()
    symbols = subprocess.run(["nm", "-D", str(shim)], capture_output=True, text=True).stdout
    assert "nft_run_cmd_from_buffer@@LIBNFTABLES_1" in symbols
